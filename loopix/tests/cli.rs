//! The `loopix` command line as a whole: `--help` works on every command and
//! subcommand (exit 0, on stdout), `--version` works, a usage mistake exits 2
//! and names the flag, and `completions` and `man` print their scripts
//! (`man --dir` writes a page per subcommand).

mod common;
use common::{loopix, stderr, stdout};

/// Every command path, as the words before `--help`.
const COMMANDS: &[&[&str]] = &[
    &[],
    &["keygen"],
    &["mix"],
    &["provider"],
    &["provider", "register"],
    &["provider", "unregister"],
    &["provider", "clients"],
    &["operator-keygen"],
    &["topology"],
    &["topology", "build"],
    &["topology", "show"],
    &["topology", "verify"],
    &["client"],
    &["client", "init"],
    &["client", "send"],
    &["client", "recv"],
    &["client", "run"],
    &["client", "address"],
    &["testnet"],
    &["tune"],
    &["tune", "simulate"],
    &["tune", "sweep"],
    &["tune", "recommend"],
    &["doctor"],
    &["completions"],
    &["man"],
];

#[test]
fn help_works_on_every_command() {
    for path in COMMANDS {
        let mut args = path.to_vec();
        args.push("--help");
        let out = loopix(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("Usage: loopix"),
            "{args:?}: {}",
            stdout(&out)
        );
    }
    let out = loopix(&["mix", "--help"]);
    assert!(stdout(&out).contains("--config"), "{}", stdout(&out));
    let out = loopix(&["help", "topology", "build"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("--operator-key"), "{}", stdout(&out));
}

#[test]
fn version_prints_the_crate_version() {
    let out = loopix(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn usage_mistakes_exit_2_and_name_the_flag() {
    for (args, names) in [
        (&["mix", "--bogus"][..], "--bogus"),
        (&["mix"], "--config"),
        (&["provider"], "--config"),
        (&["provider", "unregister", "--config", "p.toml"], "--slot"),
        (&["keygen", "--dir", "k", "--epoch-s", "0"], "--epoch-s"),
        (
            &["keygen", "--dir", "k", "--address", "nowhere"],
            "--address",
        ),
        (&["topology", "build", "--layers", "0"], "--layers"),
        (&["testnet", "--io", "fast"], "--io"),
        (&["testnet", "--layers", "11"], "--layers"),
        (&["client", "recv", "--dir", "d", "--count", "0"], "--count"),
        // A mistake only the command sees, printed the way clap prints its own.
        (
            &[
                "topology",
                "build",
                "--operator-key",
                "k",
                "--layers",
                "1",
                "--out",
                "/nonexistent/t.toml",
                "5:x",
            ],
            "mix layer 1 to 1",
        ),
        // More layers than a packet's hops can hold (issue 13).
        (
            &[
                "topology",
                "build",
                "--operator-key",
                "k",
                "--layers",
                "4",
                "--max-hops",
                "6",
                "--out",
                "/nonexistent/t.toml",
                "1:x",
            ],
            "params.max_hops is 6 but a path through 4 layers takes 7 hops",
        ),
    ] {
        let out = loopix(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(names), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
}

#[test]
fn completions_and_man_page_are_generated() {
    let out = loopix(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("operator-keygen"), "{}", stdout(&out));
    let out = loopix(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with(".ie") || stdout(&out).contains(".TH"));
    assert_eq!(loopix(&["completions", "tcsh"]).status.code(), Some(2));
    let dir = tempfile::tempdir().expect("tempdir");
    let out = loopix(&["man", "--dir", dir.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for page in ["loopix.1", "loopix-mix.1", "loopix-topology-build.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(text.contains(".TH"), "{page}: {text}");
    }
}
