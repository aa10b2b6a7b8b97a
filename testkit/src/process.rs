//! One wrapper of a child node process, for every test, the testnet's
//! supervisor and the benchmarks: start it with its output in a log file,
//! wait (bounded) until its metrics endpoint answers, read its metrics,
//! signal it, stop it with SIGTERM and a bound, and kill it when dropped.
//!
//! Invariant: a [`NodeProcess`] never outlives its owner. Dropping it kills
//! and reaps the child if it still runs, so an early return or a failed
//! assertion does not leak a process; every wait here has a bound and
//! reports the log's tail when it runs out.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// How long a node may take to answer on its metrics endpoint.
pub const START_BOUND: Duration = Duration::from_secs(15);

/// How long [`NodeProcess::wait_metric`] waits.
pub const METRIC_BOUND: Duration = Duration::from_secs(10);

/// One running child (usually `loopix mix|provider --config FILE`).
pub struct NodeProcess {
    /// A short name for messages (`mix-l1-2`, `provider-0`).
    pub name: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// Its metrics endpoint, if it serves one.
    pub metrics: Option<SocketAddr>,
    child: Child,
    exited: Option<ExitStatus>,
}

impl NodeProcess {
    /// Start `program args...` as `name`, its output written to `log`
    /// (created anew). Does not wait for anything.
    pub fn spawn(name: &str, program: &Path, args: &[&str], log: &Path) -> Result<Self, String> {
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
        Ok(NodeProcess {
            name: name.to_owned(),
            log: log.to_owned(),
            metrics: None,
            child,
            exited: None,
        })
    }

    /// `program role --config config`, logged beside the config
    /// (`config.log`), up once `metrics` answers (within [`START_BOUND`]).
    pub fn start_node(
        program: &Path,
        role: &str,
        config: &Path,
        metrics: SocketAddr,
    ) -> Result<Self, String> {
        let log = config.with_extension("log");
        let config_arg = config.to_string_lossy();
        let name = format!("{role} {}", config.display());
        let mut p = Self::spawn(&name, program, &[role, "--config", &config_arg], &log)?;
        p.wait_up(metrics, START_BOUND)?;
        Ok(p)
    }

    /// Wait until `metrics` answers; an error (with the log's tail) if the
    /// child exits first or `bound` passes.
    pub fn wait_up(&mut self, metrics: SocketAddr, bound: Duration) -> Result<(), String> {
        self.metrics = Some(metrics);
        let deadline = Instant::now() + bound;
        while Metrics::scrape(metrics).is_none() {
            if let Some(status) = self.try_exited() {
                return Err(format!(
                    "{} exited ({status}): {}",
                    self.name,
                    self.log_tail(20)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: metrics at {metrics} did not answer within {bound:?}: {}",
                    self.name,
                    self.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its metrics now; panics (with the log) if it serves none or does not
    /// answer: for tests, where that is the failure.
    pub fn metrics(&self) -> Metrics {
        let addr = self.metrics.expect("started with a metrics endpoint");
        Metrics::scrape(addr)
            .unwrap_or_else(|| panic!("{}: no metrics at {addr}: {}", self.name, self.log_text()))
    }

    /// `name{labels}` summed now (see [`Metrics::sum`]); panics as
    /// [`NodeProcess::metrics`] does.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics().sum(name, labels)
    }

    /// Drops for the reason labelled `reason`, over every shard.
    pub fn dropped(&self, reason: &str) -> f64 {
        self.metric(
            loopix_engine::metrics::names::DROPPED,
            &[("reason", reason)],
        )
    }

    /// Wait (at most [`METRIC_BOUND`]) until `name{labels}` summed reaches
    /// `at_least`; returns the value, panics with the log if it does not.
    pub fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
        let deadline = Instant::now() + METRIC_BOUND;
        loop {
            let v = self.metric(name, labels);
            if v >= at_least {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {name}{labels:?} stayed at {v}, wanted {at_least}: {}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGHUP (reload); panics if it cannot be sent.
    pub fn sighup(&self) {
        assert!(
            self.signal(libc::SIGHUP),
            "{}: cannot send SIGHUP",
            self.name
        );
    }

    /// Send `signal` (a `libc::SIG*`); false if it could not be sent.
    pub fn signal(&self, signal: i32) -> bool {
        self.exited.is_none() && loopix_engine::io::send_signal(self.pid(), signal).is_ok()
    }

    /// The exit status, if the child has exited (reaps it).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }

    /// SIGTERM, then wait at most `bound`. `Ok(status)` if it exited by
    /// itself; otherwise it is killed and the error carries the log's tail.
    pub fn terminate(&mut self, bound: Duration) -> Result<ExitStatus, String> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + bound;
        loop {
            if let Some(status) = self.try_exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "{}: no exit within {bound:?} of SIGTERM: {}",
                    self.name,
                    self.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL and reap (a crash, as far as the node can tell).
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last `lines` lines.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
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
    fn a_child_that_never_serves_metrics_is_reported_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sh = Path::new("/bin/sh");
        let mut p = NodeProcess::spawn(
            "dies",
            sh,
            &["-c", "echo bye; exit 3"],
            &dir.path().join("a"),
        )
        .expect("spawn");
        let addr = "127.0.0.1:9".parse().expect("addr");
        let err = p
            .wait_up(addr, Duration::from_secs(10))
            .expect_err("never up");
        assert!(err.contains("exited") && err.contains("bye"), "{err}");
        assert_eq!(p.try_exited().and_then(|s| s.code()), Some(3));
    }

    #[test]
    fn terminate_stops_a_child_and_drop_kills_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sh = Path::new("/bin/sh");
        let mut p = NodeProcess::spawn("sleeps", sh, &["-c", "sleep 30"], &dir.path().join("b"))
            .expect("spawn");
        // `sh` dies of the SIGTERM: a status, not a success.
        let status = p.terminate(Duration::from_secs(5)).expect("exits");
        assert!(!status.success());
        let q = NodeProcess::spawn("sleeps", sh, &["-c", "sleep 30"], &dir.path().join("c"))
            .expect("spawn");
        let pid = q.pid();
        drop(q);
        // Reaped: the pid no longer names our child.
        assert!(loopix_engine::io::send_signal(pid, 0).is_err());
    }
}
