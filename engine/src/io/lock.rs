//! One running instance per directory: an exclusive `flock` on
//! `<dir>/.lock`, held for the life of the process (the kernel releases it
//! when the process ends, however it ends, so a stale lock never blocks a
//! restart). The holder's PID is written into the file so that a refused
//! second instance can name it.

#![allow(unsafe_code)] // reason: flock(2) on a descriptor we own

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name inside the locked directory.
pub const LOCK_FILE: &str = ".lock";

/// A held directory lock; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "{dir} is in use by another loopix process (PID {pid}); stop it first, or give this \
         node its own directory",
        dir = .dir.display()
    )]
    Held {
        /// The locked directory.
        dir: PathBuf,
        /// The holder's PID as it wrote it (`unknown` if unreadable).
        pid: String,
    },
    /// The lock file could not be opened or written.
    #[error("{path}: cannot lock: {err}", path = .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        err: io::Error,
    },
}

impl DirLock {
    /// Take the lock on `dir` without waiting.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |err| LockError::Io {
            path: path.clone(),
            err,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        // SAFETY: flock takes an open descriptor and integer flags.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    dir: dir.to_owned(),
                    pid: if pid.is_empty() { "unknown" } else { pid }.to_owned(),
                });
            }
            return Err(io_err(err));
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = DirLock::acquire(dir.path()).expect("first");
        assert_eq!(held.path(), dir.path().join(LOCK_FILE));
        // flock locks belong to the open file description: a second open in
        // the same process conflicts just as another process would.
        let e = DirLock::acquire(dir.path()).expect_err("second");
        let text = e.to_string();
        assert!(
            text.contains(&format!("PID {}", std::process::id())),
            "{text}"
        );
        drop(held);
        DirLock::acquire(dir.path()).expect("free again");
    }
}
