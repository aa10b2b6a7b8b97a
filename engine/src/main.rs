//! The `loopix` command: `keygen` writes a node's keys, `mix` runs a mix
//! node, `provider` runs a provider and `provider register|unregister|
//! clients` manage its clients. Errors print one message naming the problem and exit 1; usage
//! mistakes exit 2.

use std::path::PathBuf;
use std::process::ExitCode;

use loopix_engine::config::MixConfig;
use loopix_engine::keyfile::{self, epoch_at, unix_now_s};
use loopix_engine::node;
use loopix_engine::provider;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage:
  loopix keygen --dir DIR [--epoch-s SECONDS] [--epochs N]
      write a node's link key and N epoch mix keys (default 3600 s, 24 epochs
      from the current one) into DIR, mode 0600, never overwriting a key;
      prints the public descriptor (also in DIR/node.toml)
  loopix mix --config FILE
      run a mix node (see systemd/mix.example.toml)
  loopix provider --config FILE
      run a provider (see systemd/provider.example.toml); SIGHUP rescans
      its client registry at once
  loopix provider register --config FILE [--name NAME] [--out FILE]
      register a client; print its registration (or write it to FILE, 0600)
  loopix provider unregister --config FILE --slot N
      remove the client in slot N (its stored messages are dropped)
  loopix provider clients --config FILE
      list registered clients: slot, name, mailbox";

fn usage(msg: &str) -> ExitCode {
    eprintln!("loopix: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage("missing command");
    };
    // `provider` has admin subcommands; options follow them.
    let (cmd, first_opt) = match (cmd.as_str(), args.get(1).map(String::as_str)) {
        ("provider", Some(sub @ ("register" | "unregister" | "clients"))) => {
            (format!("provider {sub}"), 2)
        }
        _ => (cmd.clone(), 1),
    };
    let mut opts = std::collections::HashMap::new();
    let mut it = args[first_opt..].iter();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else {
            return usage(&format!("unexpected argument {a:?}"));
        };
        let Some(v) = it.next() else {
            return usage(&format!("--{name} needs a value"));
        };
        opts.insert(name.to_string(), v.clone());
    }
    let number = |name: &str, default: u64| -> Result<u64, ExitCode> {
        match opts.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| usage(&format!("--{name} must be a whole number, not {v:?}"))),
        }
    };
    let result = match cmd.as_str() {
        "keygen" => {
            let Some(dir) = opts.get("dir") else {
                return usage("keygen needs --dir DIR");
            };
            let epoch_s = match number("epoch-s", 3600) {
                Ok(v) if v > 0 => v,
                Ok(_) => return usage("--epoch-s must be at least 1"),
                Err(c) => return c,
            };
            let epochs = match number("epochs", 24) {
                Ok(v) => v,
                Err(c) => return c,
            };
            let first = epoch_at(unix_now_s(), epoch_s);
            keyfile::keygen(&PathBuf::from(dir), epoch_s, first, epochs)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    for p in &r.created {
                        eprintln!("created {}", p.display());
                    }
                    print!(
                        "{}",
                        toml::to_string(&r.descriptor).map_err(|e| e.to_string())?
                    );
                    Ok(())
                })
        }
        "mix" => {
            let Some(path) = opts.get("config") else {
                return usage("mix needs --config FILE");
            };
            MixConfig::load(&PathBuf::from(path))
                .map_err(|e| e.to_string())
                .and_then(|c| node::run_mix(&c))
        }
        "provider" | "provider register" | "provider unregister" | "provider clients" => {
            let Some(path) = opts.get("config") else {
                return usage(&format!("{cmd} needs --config FILE"));
            };
            let config = match MixConfig::load(&PathBuf::from(path)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("loopix: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match cmd.as_str() {
                "provider" => node::run_provider(&config),
                "provider register" => {
                    let name = opts.get("name").map_or("", String::as_str);
                    let out = opts.get("out").map(PathBuf::from);
                    if let Some(o) = &out {
                        if o.exists() {
                            return usage(&format!(
                                "--out {}: the file exists; name a new file",
                                o.display()
                            ));
                        }
                    }
                    provider::register(&config, name).and_then(|r| {
                        eprintln!("registered slot {} mailbox {}", r.slot, r.mailbox);
                        match &out {
                            Some(o) => provider::write_registration(o, &r),
                            None => {
                                print!("{}", r.to_toml());
                                Ok(())
                            }
                        }
                    })
                }
                "provider unregister" => {
                    let slot = match opts.get("slot").map(|v| v.parse::<u32>()) {
                        Some(Ok(s)) => s,
                        Some(Err(_)) => return usage("--slot must be a whole number"),
                        None => return usage("unregister needs --slot N"),
                    };
                    provider::unregister(&config, slot).map(|e| {
                        eprintln!(
                            "removed slot {} ({}) mailbox {}; a running provider drops its messages within a second",
                            e.slot, e.name, e.mailbox
                        );
                    })
                }
                _ => provider::list(&config).map(|(text, problems)| {
                    print!("{text}");
                    for p in problems {
                        eprintln!("loopix: {p}");
                    }
                }),
            }
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => return usage(&format!("unknown command {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("loopix: {msg}");
            ExitCode::FAILURE
        }
    }
}
