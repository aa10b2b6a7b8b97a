//! `loopix doctor [--config FILE]`: is this host ready to run a node?
//! Each check prints `ok`, `warn` or `fail` with its finding, and the fix
//! when it is not ok. Exit 0 when nothing fails (warnings allowed), 1 when
//! a check fails.
//!
//! Invariant: every check is a pure function of its inputs (file contents,
//! numbers, the engine's io_uring probe result), so unit tests cover each
//! branch with made-up inputs; only [`doctor`] reads the host.

use std::path::PathBuf;

use clap::Args;
use loopix_engine::config::{EngineSection, IoChoice, MixConfig};

use crate::CliError;

/// `loopix doctor`'s options.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The node's config file (default: the defaults of `[engine]`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but slower or less robust than it could be.
    Warn,
    /// The node will not run, or not as configured.
    Fail,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The check's name (`io_uring`, `memlock`, ...).
    pub name: &'static str,
    /// The verdict.
    pub level: Level,
    /// What was found.
    pub finding: String,
    /// How to fix it (empty when ok).
    pub fix: String,
}

fn check(name: &'static str, level: Level, finding: String, fix: &str) -> Check {
    Check {
        name,
        level,
        finding,
        fix: fix.to_owned(),
    }
}

/// The io_uring check, from `/proc/sys/kernel/io_uring_disabled` (absent
/// on kernels before 6.6), the engine's probe and `engine.io`.
pub fn io_uring(disabled: Option<&str>, probe: &Result<(), String>, choice: IoChoice) -> Check {
    let sysctl = match disabled.map(str::trim) {
        Some("2") => "kernel.io_uring_disabled = 2 (off for everyone)",
        Some("1") => "kernel.io_uring_disabled = 1 (only for io_uring_group or CAP_SYS_ADMIN)",
        Some("0") => "kernel.io_uring_disabled = 0",
        Some(_) => "kernel.io_uring_disabled unreadable",
        None => "no kernel.io_uring_disabled (kernel before 6.6)",
    };
    let fix = "allow it (sysctl -w kernel.io_uring_disabled=0, and no seccomp profile that \
               blocks io_uring_setup), or set engine.io = \"portable\"";
    match (choice, probe) {
        (IoChoice::Portable, _) => check(
            "io_uring",
            Level::Ok,
            format!("engine.io = \"portable\": not used; {sysctl}"),
            "",
        ),
        (_, Ok(())) => check(
            "io_uring",
            Level::Ok,
            format!("the probe passed, the node picks io_uring; {sysctl}"),
            "",
        ),
        (IoChoice::Uring, Err(why)) => check(
            "io_uring",
            Level::Fail,
            format!("engine.io = \"uring\" but the probe failed: {why}; {sysctl}"),
            fix,
        ),
        (IoChoice::Auto, Err(why)) => check(
            "io_uring",
            Level::Warn,
            format!("the probe failed ({why}); {sysctl}; the node falls back to the portable backend (slower)"),
            fix,
        ),
    }
}

/// The CPU features that matter and what uses each: name, present, use.
pub type CpuFeature = (&'static str, bool, &'static str);

/// This CPU's features (all absent off x86_64).
pub fn cpu_features() -> Vec<CpuFeature> {
    #[cfg(target_arch = "x86_64")]
    let has = |name: &str| match name {
        "aes" => std::arch::is_x86_feature_detected!("aes"),
        "pclmulqdq" => std::arch::is_x86_feature_detected!("pclmulqdq"),
        "adx" => std::arch::is_x86_feature_detected!("adx"),
        "bmi2" => std::arch::is_x86_feature_detected!("bmi2"),
        "avx2" => std::arch::is_x86_feature_detected!("avx2"),
        "avx512ifma" => std::arch::is_x86_feature_detected!("avx512ifma"),
        _ => false,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let has = |_: &str| false;
    FEATURES
        .iter()
        .map(|&(name, what)| (name, has(name), what))
        .collect()
}

/// The features checked: name and what uses it.
const FEATURES: [(&str, &str); 6] = [
    (
        "aes",
        "AES-NI: Sphinx and Lioness AES-128-CTR (aes crate), the link's AES-GCM-SIV (aws-lc)",
    ),
    (
        "pclmulqdq",
        "carry-less multiply: the link's AES-GCM-SIV (aws-lc)",
    ),
    (
        "adx",
        "ADX: aws-lc's Ed25519 field arithmetic (topology signatures)",
    ),
    ("bmi2", "BMI2 (mulx): aws-lc's Ed25519 field arithmetic"),
    (
        "avx2",
        "AVX2: curve25519-dalek's vector backend (Sphinx X25519 work)",
    ),
    (
        "avx512ifma",
        "AVX-512 IFMA: curve25519-dalek's IFMA backend (nightly builds only; optional)",
    ),
];

/// The CPU check: AES-NI missing is a warning (every packet is AES), the
/// others are speed-ups; IFMA is optional and never warns.
pub fn cpu(x86_64: bool, features: &[CpuFeature]) -> Check {
    if !x86_64 {
        return check(
            "cpu",
            Level::Warn,
            "not x86_64: AES-NI, ADX, BMI2 and AVX-512 IFMA do not apply; the crypto uses this \
             architecture's own paths (check `loopix-bench` numbers)"
                .into(),
            "none needed if the benchmarks meet your load; x86_64 with AES-NI is the tested platform",
        );
    }
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for &(name, present, what) in features {
        if present {
            found.push(name);
        } else if name != "avx512ifma" {
            missing.push(format!("{name} missing ({what})"));
        }
    }
    let found = format!("present: {}", found.join(" "));
    if missing.is_empty() {
        check("cpu", Level::Ok, found, "")
    } else {
        check(
            "cpu",
            Level::Warn,
            format!("{found}; {}: slower software fallbacks", missing.join("; ")),
            "run on a CPU (or a VM CPU model, e.g. `-cpu host`) that exposes these features",
        )
    }
}

/// Smallest memlock limit that is not a warning: io_uring rings and their
/// buffer rings count against it on kernels before 5.12.
pub const MEMLOCK_MIN_BYTES: u64 = 8 << 20;

/// The soft `Max locked memory` limit from `/proc/self/limits`: `Some(None)`
/// for unlimited, `None` when the line is missing or unreadable.
pub fn parse_memlock(limits: &str) -> Option<Option<u64>> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))?;
    let soft = line["Max locked memory".len()..]
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(None)
    } else {
        soft.parse().ok().map(Some)
    }
}

/// The memlock check.
pub fn memlock(limit: Option<Option<u64>>) -> Check {
    let fix = "LimitMEMLOCK=infinity in the systemd unit (as systemd/loopix-mix.service does), \
               or `ulimit -l unlimited` before starting the node";
    match limit {
        Some(None) => check("memlock", Level::Ok, "unlimited".into(), ""),
        Some(Some(b)) if b >= MEMLOCK_MIN_BYTES => {
            check("memlock", Level::Ok, format!("{b} bytes"), "")
        }
        Some(Some(b)) => check(
            "memlock",
            Level::Warn,
            format!(
                "{b} bytes, below {MEMLOCK_MIN_BYTES}: on kernels before 5.12 io_uring's rings \
                 count against it and setup can fail"
            ),
            fix,
        ),
        None => check(
            "memlock",
            Level::Warn,
            "could not read Max locked memory from /proc/self/limits".into(),
            fix,
        ),
    }
}

/// The socket buffer check: `rmem_max` and `wmem_max` (file contents)
/// against `engine.socket_buffer_bytes`. Below it the kernel caps the
/// buffers unless the node runs with CAP_NET_ADMIN.
pub fn socket_buffers(rmem_max: Option<&str>, wmem_max: Option<&str>, want: usize) -> Check {
    let parse = |s: Option<&str>| s.and_then(|s| s.trim().parse::<u64>().ok());
    let (r, w) = (parse(rmem_max), parse(wmem_max));
    let want = want as u64;
    let fix = format!(
        "sysctl -w net.core.rmem_max={want} net.core.wmem_max={want} (and in /etc/sysctl.d), or \
         give the node CAP_NET_ADMIN, or lower engine.socket_buffer_bytes"
    );
    match (r, w) {
        (Some(r), Some(w)) if r >= want && w >= want => check(
            "socket_buffers",
            Level::Ok,
            format!("rmem_max {r}, wmem_max {w} >= engine.socket_buffer_bytes {want}"),
            "",
        ),
        (Some(r), Some(w)) => check(
            "socket_buffers",
            Level::Warn,
            format!(
                "rmem_max {r}, wmem_max {w} < engine.socket_buffer_bytes {want}: without \
                 CAP_NET_ADMIN the kernel caps the buffers and bursts drop packets"
            ),
            &fix,
        ),
        _ => check(
            "socket_buffers",
            Level::Warn,
            "could not read /proc/sys/net/core/rmem_max or wmem_max".into(),
            &fix,
        ),
    }
}

/// The clock source check (`current_clocksource`): `tsc` is read in user
/// space for a few ns; others may cost a system call per timestamp.
pub fn clocksource(current: Option<&str>) -> Check {
    let fix = "use the tsc clock source if the CPU has an invariant TSC \
               (clocksource=tsc tsc=reliable on the kernel command line)";
    match current.map(str::trim) {
        Some("tsc") => check("clocksource", Level::Ok, "tsc".into(), ""),
        Some(other) => check(
            "clocksource",
            Level::Warn,
            format!("{other}: timestamps may be slower than with tsc"),
            fix,
        ),
        None => check(
            "clocksource",
            Level::Warn,
            "could not read /sys/devices/system/clocksource/clocksource0/current_clocksource"
                .into(),
            fix,
        ),
    }
}

/// The core check: `engine.shards` pinned from `engine.first_core` against
/// the cores this process may use.
pub fn cores(available: usize, engine: &EngineSection) -> Check {
    let what = format!(
        "{available} cores, engine.shards = {} (first_core {}, pin_cores {})",
        engine.shards, engine.first_core, engine.pin_cores
    );
    let pinned_past = engine.first_core + engine.shards;
    if engine.shards > available {
        check(
            "cores",
            Level::Fail,
            format!("{what}: more shards than cores, so shards share cores"),
            "lower engine.shards to at most the cores (one less leaves a core for the kernel)",
        )
    } else if engine.pin_cores && pinned_past > available {
        check(
            "cores",
            Level::Warn,
            format!("{what}: pinning needs cores up to {pinned_past}; shards past the last core run unpinned"),
            "lower engine.first_core so first_core + shards fits the cores",
        )
    } else if engine.shards == available {
        check(
            "cores",
            Level::Warn,
            format!("{what}: no core left for the control thread and the kernel's network work"),
            "leave a core free: engine.shards = cores - 1",
        )
    } else {
        check("cores", Level::Ok, what, "")
    }
}

/// Runs every check on this host.
pub fn run_checks(engine: &EngineSection) -> Vec<Check> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let probe = loopix_engine::io::uring::probe();
    let disabled = read("/proc/sys/kernel/io_uring_disabled");
    let limits = read("/proc/self/limits").unwrap_or_default();
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    vec![
        io_uring(disabled.as_deref(), &probe, engine.io),
        cpu(cfg!(target_arch = "x86_64"), &cpu_features()),
        memlock(parse_memlock(&limits)),
        socket_buffers(
            read("/proc/sys/net/core/rmem_max").as_deref(),
            read("/proc/sys/net/core/wmem_max").as_deref(),
            engine.socket_buffer_bytes,
        ),
        clocksource(
            read("/sys/devices/system/clocksource/clocksource0/current_clocksource").as_deref(),
        ),
        cores(available, engine),
    ]
}

/// Renders the checks, one line each plus an indented fix.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:<4}  {:<14} {}\n",
            c.level.word(),
            c.name,
            c.finding
        ));
        if c.level != Level::Ok {
            out.push_str(&format!("      {:<14} fix: {}\n", "", c.fix));
        }
    }
    out
}

/// `loopix doctor`: exit 0 when nothing fails, 1 when a check fails.
pub fn doctor(a: &DoctorArgs) -> Result<(), CliError> {
    let engine = match &a.config {
        Some(path) => MixConfig::load(path).map_err(|e| e.to_string())?.engine,
        None => EngineSection::default(),
    };
    let checks = run_checks(&engine);
    print!("{}", render(&checks));
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.level == Level::Fail)
        .map(|c| c.name)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "doctor: failed: {}",
            failed.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(shards: usize, first_core: usize, pin_cores: bool) -> EngineSection {
        EngineSection {
            shards,
            first_core,
            pin_cores,
            ..EngineSection::default()
        }
    }

    #[test]
    fn io_uring_branches() {
        let ok: Result<(), String> = Ok(());
        let bad: Result<(), String> = Err("io_uring_setup: EPERM".into());
        assert_eq!(io_uring(Some("0\n"), &ok, IoChoice::Auto).level, Level::Ok);
        assert_eq!(io_uring(None, &ok, IoChoice::Uring).level, Level::Ok);
        assert_eq!(
            io_uring(Some("2"), &bad, IoChoice::Portable).level,
            Level::Ok
        );
        let w = io_uring(Some("2"), &bad, IoChoice::Auto);
        assert_eq!(w.level, Level::Warn);
        assert!(w.finding.contains("= 2") && w.fix.contains("io_uring_disabled=0"));
        let f = io_uring(Some("1"), &bad, IoChoice::Uring);
        assert_eq!(f.level, Level::Fail);
        assert!(f.finding.contains("EPERM") && f.finding.contains("= 1"));
        assert!(io_uring(Some("x"), &bad, IoChoice::Auto)
            .finding
            .contains("unreadable"));
    }

    #[test]
    fn cpu_branches() {
        let all: Vec<CpuFeature> = FEATURES.iter().map(|&(n, w)| (n, true, w)).collect();
        assert_eq!(cpu(true, &all).level, Level::Ok);
        let mut no_ifma = all.clone();
        no_ifma[5].1 = false;
        assert_eq!(cpu(true, &no_ifma).level, Level::Ok);
        let mut no_aes = all.clone();
        no_aes[0].1 = false;
        let w = cpu(true, &no_aes);
        assert_eq!(w.level, Level::Warn);
        assert!(w.finding.contains("aes missing"));
        assert_eq!(cpu(false, &[]).level, Level::Warn);
    }

    #[test]
    fn memlock_parses_and_judges() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max locked memory         65536                65536                bytes\n";
        assert_eq!(parse_memlock(limits), Some(Some(65536)));
        let unl = "Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(parse_memlock(unl), Some(None));
        assert_eq!(parse_memlock("nothing"), None);
        assert_eq!(memlock(Some(None)).level, Level::Ok);
        assert_eq!(memlock(Some(Some(8 << 20))).level, Level::Ok);
        let w = memlock(Some(Some(65536)));
        assert_eq!(w.level, Level::Warn);
        assert!(w.fix.contains("LimitMEMLOCK"));
        assert_eq!(memlock(None).level, Level::Warn);
    }

    #[test]
    fn socket_buffer_branches() {
        let want = 8 << 20;
        assert_eq!(
            socket_buffers(Some("8388608\n"), Some("9000000"), want).level,
            Level::Ok
        );
        let w = socket_buffers(Some("212992\n"), Some("8388608"), want);
        assert_eq!(w.level, Level::Warn);
        assert!(w.fix.contains("net.core.rmem_max=8388608"));
        assert_eq!(socket_buffers(None, Some("1"), want).level, Level::Warn);
        assert_eq!(
            socket_buffers(Some("junk"), Some("1"), want).level,
            Level::Warn
        );
    }

    #[test]
    fn clocksource_branches() {
        assert_eq!(clocksource(Some("tsc\n")).level, Level::Ok);
        let w = clocksource(Some("hpet\n"));
        assert_eq!(w.level, Level::Warn);
        assert!(w.finding.starts_with("hpet"));
        assert_eq!(clocksource(None).level, Level::Warn);
    }

    #[test]
    fn core_branches() {
        assert_eq!(cores(4, &engine(2, 0, true)).level, Level::Ok);
        assert_eq!(cores(4, &engine(4, 0, true)).level, Level::Warn);
        assert_eq!(cores(4, &engine(2, 3, true)).level, Level::Warn);
        assert_eq!(cores(4, &engine(2, 3, false)).level, Level::Ok);
        assert_eq!(cores(1, &engine(2, 0, false)).level, Level::Fail);
    }

    /// Every check's name, in the order printed.
    const CHECKS: [&str; 6] = [
        "io_uring",
        "cpu",
        "memlock",
        "socket_buffers",
        "clocksource",
        "cores",
    ];

    #[test]
    fn run_checks_runs_every_check_in_order() {
        let names: Vec<&str> = run_checks(&EngineSection::default())
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, CHECKS);
    }

    #[test]
    fn render_names_every_check_and_fix() {
        let checks = vec![clocksource(Some("tsc")), clocksource(Some("hpet"))];
        let text = render(&checks);
        assert!(text.starts_with("ok    clocksource"));
        assert!(text.contains("warn  clocksource"));
        assert!(text.contains("fix: use the tsc"));
    }
}
