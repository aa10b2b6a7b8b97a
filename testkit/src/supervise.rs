//! Child node processes for `loopix testnet` (and tests): start `loopix mix`
//! or `loopix provider` with its log in a file, notice one that dies, and
//! stop them all with SIGTERM, then SIGKILL after a bound.
//!
//! Invariant: a `Supervisor` never leaves a child behind. Dropping it kills
//! and reaps whatever is still running, so an early return or a panic in the
//! caller does not leak processes.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

pub use crate::process::{log_tail, NodeProcess};

/// The children of one testnet.
#[derive(Default)]
pub struct Supervisor {
    nodes: Vec<NodeProcess>,
    /// Per child: its exit was already reported by `check_exited`.
    reported: Vec<bool>,
}

impl Supervisor {
    /// An empty supervisor.
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// Start `program args...` as `name`, its output written to `log`.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&str],
        log: &Path,
    ) -> Result<(), String> {
        self.nodes
            .push(NodeProcess::spawn(name, program, args, log)?);
        self.reported.push(false);
        Ok(())
    }

    /// The children, in start order.
    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// The first child found to have exited since the last call, with its
    /// status and the last lines of its log.
    pub fn check_exited(&mut self) -> Option<(String, ExitStatus, String)> {
        for (n, reported) in self.nodes.iter_mut().zip(&mut self.reported) {
            if *reported {
                continue;
            }
            if let Some(status) = n.try_exited() {
                *reported = true;
                return Some((n.name.clone(), status, n.log_tail(10)));
            }
        }
        None
    }

    /// SIGTERM every child still running, wait up to `bound` for all of
    /// them, SIGKILL what is left. Returns each child's name and exit status
    /// (`None`: had to be killed).
    pub fn stop_all(&mut self, bound: Duration) -> Vec<(String, Option<ExitStatus>)> {
        for n in &self.nodes {
            n.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            let running = self
                .nodes
                .iter_mut()
                .filter_map(|n| n.try_exited().is_none().then_some(()))
                .count();
            if running == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.nodes
            .iter_mut()
            .map(|n| {
                let status = n.try_exited();
                if status.is_none() {
                    n.kill();
                }
                (n.name.clone(), status)
            })
            .collect()
    }
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
