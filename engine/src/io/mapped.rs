//! A file mapped shared into memory and seen as 64-bit atomic words: the
//! storage of the persistent replay filters (`replay.rs`).
//!
//! Why a shared mapping: a store into it is a store into the kernel's page
//! cache, so a process that dies (SIGKILL, a panic, the OOM killer) loses
//! nothing it wrote; only a power loss or a kernel crash can, and
//! [`MappedFile::sync`] (msync) bounds that to the interval between syncs.
//! Why atomics: every shard of a node and the sync thread share one mapping;
//! word-sized relaxed loads, stores and `fetch_or` are the only accesses, so
//! no `&mut` to mapped memory ever exists.
//!
//! Invariants: the mapping is page aligned and lives as long as the value;
//! the file's length is fixed when it is created (disk blocks reserved by
//! `posix_fallocate`, so a later store can never fault for want of space);
//! the first [`HEADER_BYTES`] are the header words, the rest the body words.

#![allow(unsafe_code)] // reason: mmap-backed atomics and posix_fallocate; audited per call

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

/// Bytes of header before the body: one page, so the body is page aligned.
pub const HEADER_BYTES: usize = 4096;
const HEADER_WORDS: usize = HEADER_BYTES / 8;

/// A shared, fixed-length, file-backed mapping (see the module docs).
pub struct MappedFile {
    map: memmap2::MmapRaw,
    path: PathBuf,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.path)
            .field("len", &self.map.len())
            .finish()
    }
}

impl MappedFile {
    /// Create `path` (which must not exist) of `HEADER_BYTES + body_bytes`
    /// zero bytes with its blocks reserved, and map it. `body_bytes` must be
    /// a multiple of 8. Written under a temporary name and linked into
    /// place, so a crash never leaves a short file under `path`.
    pub fn create(path: &Path, body_bytes: u64) -> io::Result<MappedFile> {
        if !body_bytes.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "body length is not whole words",
            ));
        }
        let len = HEADER_BYTES as u64 + body_bytes;
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let off_len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
        // SAFETY: posix_fallocate takes an open descriptor and two integers.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) };
        if rc != 0 {
            let _ = fs::remove_file(&tmp);
            return Err(io::Error::from_raw_os_error(rc));
        }
        file.sync_all()?;
        // A hard link, not a rename: it fails if `path` exists.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        linked?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Self::map(file, path)
    }

    /// Map an existing file read-write.
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        if len < HEADER_BYTES as u64 || !len.is_multiple_of(8) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes: shorter than its header or not whole words"),
            ));
        }
        Self::map(file, path)
    }

    fn map(file: File, path: &Path) -> io::Result<MappedFile> {
        let map = memmap2::MmapOptions::new().populate().map_raw(&file)?;
        Ok(MappedFile {
            map,
            path: path.to_owned(),
        })
    }

    fn words_at(&self, offset: usize, count: usize) -> &[AtomicU64] {
        assert!(offset.is_multiple_of(8) && offset + count * 8 <= self.map.len());
        // SAFETY: the mapping is page aligned (so every 8-byte offset is
        // aligned for AtomicU64), `offset + count * 8` is within it (checked
        // above), it lives as long as `self`, and it is only ever accessed
        // through atomics, which allow shared mutation. AtomicU64 has the
        // size and layout of u64.
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(offset).cast::<AtomicU64>(), count)
        }
    }

    /// The header's words.
    pub fn header(&self) -> &[AtomicU64] {
        self.words_at(0, HEADER_WORDS)
    }

    /// The body's words.
    pub fn body(&self) -> &[AtomicU64] {
        self.words_at(HEADER_BYTES, (self.map.len() - HEADER_BYTES) / 8)
    }

    /// Write every changed page to the disk and wait for it (msync).
    pub fn sync(&self) -> io::Result<()> {
        self.map.flush()
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn created_zeroed_reopened_with_what_was_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.bin");
        let m = MappedFile::create(&path, 8 * 1000).expect("created");
        assert_eq!(m.body().len(), 1000);
        assert!(m.body().iter().all(|w| w.load(Ordering::Relaxed) == 0));
        m.header()[0].store(0xfeed, Ordering::Relaxed);
        m.body()[999].fetch_or(1 << 63, Ordering::Relaxed);
        // No sync: another mapping of the same file sees the page cache.
        let again = MappedFile::open(&path).expect("opens");
        assert_eq!(again.header()[0].load(Ordering::Relaxed), 0xfeed);
        assert_eq!(again.body()[999].load(Ordering::Relaxed), 1 << 63);
        m.sync().expect("synced");
        assert!(!path.with_extension("tmp").exists());
        assert!(MappedFile::create(&path, 8).is_err(), "never overwrites");
        assert!(MappedFile::create(&dir.path().join("g"), 7).is_err());
        fs::write(dir.path().join("short"), [0u8; 100]).expect("write");
        let e = MappedFile::open(&dir.path().join("short")).expect_err("short");
        assert!(e.to_string().contains("shorter than its header"), "{e}");
    }
}
