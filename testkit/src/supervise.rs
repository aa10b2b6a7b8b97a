//! Child node processes for `loopix testnet` (and tests): start `loopix mix`
//! or `loopix provider` with its log in a file, notice one that dies, and
//! stop them all with SIGTERM, then SIGKILL after a bound.
//!
//! Invariant: a `Supervisor` never leaves a child behind. Dropping it kills
//! and reaps whatever is still running, so an early return or a panic in the
//! caller does not leak processes.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One running node.
pub struct NodeProcess {
    /// A short name (`mix-l1-2`, `provider-0`).
    pub name: String,
    /// Its log (stderr and stdout).
    pub log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

/// The children of one testnet.
#[derive(Default)]
pub struct Supervisor {
    nodes: Vec<NodeProcess>,
}

impl Supervisor {
    /// An empty supervisor.
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// Start `program args...` as `name`, its output appended to `log`.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> Result<(), String> {
        let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        self.nodes.push(NodeProcess {
            name: name.to_owned(),
            log: log.to_owned(),
            child,
            exited: None,
        });
        Ok(())
    }

    /// The children, in start order.
    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// The first child found to have exited since the last call, with its
    /// status and the last lines of its log.
    pub fn check_exited(&mut self) -> Option<(String, ExitStatus, String)> {
        for n in &mut self.nodes {
            if n.exited.is_some() {
                continue;
            }
            if let Ok(Some(status)) = n.child.try_wait() {
                n.exited = Some(status);
                return Some((n.name.clone(), status, log_tail(&n.log, 10)));
            }
        }
        None
    }

    /// SIGTERM every child still running, wait up to `bound` for all of
    /// them, SIGKILL what is left. Returns each child's name and exit status
    /// (`None`: had to be killed).
    pub fn stop_all(&mut self, bound: Duration) -> Vec<(String, Option<ExitStatus>)> {
        for n in &self.nodes {
            if n.exited.is_none() {
                let _ = loopix_engine::io::send_signal(n.child.id(), libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + bound;
        loop {
            let mut running = 0;
            for n in &mut self.nodes {
                if n.exited.is_none() {
                    match n.child.try_wait() {
                        Ok(Some(s)) => n.exited = Some(s),
                        _ => running += 1,
                    }
                }
            }
            if running == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = Vec::new();
        for n in &mut self.nodes {
            if n.exited.is_none() {
                let _ = n.child.kill();
                let _ = n.child.wait();
                out.push((n.name.clone(), None));
            } else {
                out.push((n.name.clone(), n.exited));
            }
        }
        out
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if n.exited.is_none() {
                let _ = n.child.kill();
                let _ = n.child.wait();
            }
        }
    }
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_dead_child_and_stops_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Supervisor::new();
        let sh = Path::new("/bin/sh");
        s.spawn(
            "dies",
            sh,
            &["-c", "echo bye; exit 3"],
            &dir.path().join("a"),
        )
        .expect("spawn");
        s.spawn("sleeps", sh, &["-c", "sleep 30"], &dir.path().join("b"))
            .expect("spawn");
        let t = Instant::now();
        let dead = loop {
            if let Some(d) = s.check_exited() {
                break d;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no exit noticed");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(dead.0, "dies");
        assert_eq!(dead.1.code(), Some(3));
        assert_eq!(dead.2, "bye");
        let stopped = s.stop_all(Duration::from_secs(5));
        assert_eq!(stopped.len(), 2);
        // `sh` dies of the SIGTERM: no exit code, a status nonetheless.
        assert!(stopped[1].1.is_some_and(|st| !st.success()));
    }
}
