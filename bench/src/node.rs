//! The node under test, for the benchmarks that run one (`node-bench`,
//! `junk-bench`): the benchmark binary re-executes itself with
//! [`RUN_MIX`] to run a mix in a child process (under the same allocator as
//! `loopix mix`), and reads that child's CPU time.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use loopix_engine::config::MixConfig;
use loopix_testkit::process::NodeProcess;

/// Hidden first argument: run a mix node from the config that follows.
pub const RUN_MIX: &str = "--run-mix";

/// The node side (call it from `main` when the first argument is
/// [`RUN_MIX`]): what `loopix mix --config FILE` does, plus a watchdog:
/// if the benchmark dies without stopping it (SIGKILL, say, when its guard
/// cannot run), the node notices it was re-parented and exits.
pub fn run_mix_child(bench: &'static str, config: Option<&String>) -> ExitCode {
    let Some(path) = config else {
        eprintln!("{bench} {RUN_MIX}: needs a config file");
        return ExitCode::from(2);
    };
    if let Err(e) = watch_parent(bench, RUN_MIX) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    match MixConfig::load(Path::new(path))
        .map_err(|e| e.to_string())
        .and_then(|c| loopix_engine::node::run_mix(&c))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("loopix: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Start the child's watchdog: when the benchmark that started this node
/// (as `bench mode ...`) is gone, it has been re-parented, and the node
/// exits within 0.2 s instead of running on.
pub fn watch_parent(bench: &'static str, mode: &'static str) -> Result<(), String> {
    let parent = std::os::unix::process::parent_id();
    std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            if std::os::unix::process::parent_id() != parent {
                eprintln!("{bench} {mode}: the benchmark is gone; exiting");
                std::process::exit(3);
            }
        })
        .map(drop)
        .map_err(|e| format!("{bench} {mode}: cannot start the watchdog: {e}"))
}

/// Pin the calling thread to `core`, or explain why not.
pub fn pin(core: usize) -> Result<(), String> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        Ok(())
    } else {
        Err(format!("cannot pin a thread to core {core}"))
    }
}

/// On-CPU nanoseconds of every thread of process `pid` so far (the first
/// field of each `/proc/PID/task/TID/schedstat`). This kernel has no IRQ
/// time accounting, so softirq work done in a thread's context (loopback
/// delivery of what it sends) counts as that thread's.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// The node under test: `exe --run-mix config`, up once its metrics
/// answer (the test kit's one node-process wrapper, killed when dropped).
pub fn start_node(exe: &Path, config: &Path, metrics: SocketAddr) -> Result<NodeProcess, String> {
    let log = config.with_extension("log");
    let config = config.to_string_lossy();
    let mut p = NodeProcess::spawn("the node", exe, &[RUN_MIX, &config], &log)?;
    p.wait_up(metrics, loopix_testkit::process::START_BOUND)?;
    Ok(p)
}
