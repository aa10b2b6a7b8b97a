//! The `loopix` command: `keygen` writes a node's keys, `mix` runs a mix
//! node, `provider` runs a provider and `provider register|unregister|
//! clients` manage its clients, `operator-keygen` and `topology` make
//! signed topology documents (`topology_cli.rs`), `client ...` is the
//! Loopix client (see `client_cli`). Errors print one message naming the
//! problem and exit 1; usage mistakes exit 2.

use std::path::PathBuf;
use std::process::ExitCode;

use loopix_directory::descriptor::epoch_at;
use loopix_engine::config::MixConfig;
use loopix_engine::keyfile::{self, unix_now_s};
use loopix_engine::node;
use loopix_engine::provider;
use loopix_testkit::testnet;

mod client_cli;
mod topology_cli;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE_NODE: &str = "usage:
  loopix keygen --dir DIR [--address HOST:PORT] [--epoch-s SECONDS] [--epochs N]
      write a node's identity key, link key and N epoch mix keys (default
      3600 s, 24 epochs from the current one) into DIR, mode 0600, never
      overwriting a key; prints the signed public descriptor (also in
      DIR/node.toml); --address is needed once, later runs keep it
  loopix mix --config FILE
      run a mix node (see systemd/mix.example.toml); SIGHUP reloads
      node.topology (a document that does not check is refused)
  loopix provider --config FILE
      run a provider (see systemd/provider.example.toml); SIGHUP reloads
      node.topology and rescans its client registry at once
  loopix provider register --config FILE [--name NAME] [--out FILE]
      register a client; print its registration (or write it to FILE, 0600)
  loopix provider unregister --config FILE --slot N
      remove the client in slot N (its stored messages are dropped)
  loopix provider clients --config FILE
      list registered clients: slot, name, mailbox";

fn usage_text() -> String {
    format!(
        "{USAGE_NODE}\n{}\n{}\n{}",
        testnet::USAGE,
        topology_cli::USAGE,
        client_cli::USAGE
    )
}

/// `loopix testnet`: exit 0 on a clean run, 1 on a failure (a node that
/// died, lost messages), 130 when interrupted, 2 on a usage mistake.
fn run_testnet(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage:\n{}", testnet::USAGE);
        return ExitCode::SUCCESS;
    }
    let opts = match testnet::parse_args(args) {
        Ok(o) => o,
        Err(e) => return usage(&format!("testnet: {e}")),
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, std::sync::Arc::clone(&stop)) {
            eprintln!("loopix: signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    match testnet::run(&opts, std::sync::Arc::clone(&stop)) {
        Ok(summary) => {
            print!("{}", testnet::render(&summary));
            if summary.messages_lost > 0 || summary.messages_duplicated > 0 {
                eprintln!(
                    "loopix testnet: {} messages lost, {} duplicated",
                    summary.messages_lost, summary.messages_duplicated
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) if stop.load(std::sync::atomic::Ordering::Relaxed) => {
            eprintln!("loopix testnet: interrupted ({e}); every node stopped");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("loopix testnet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("loopix: {msg}\n{}", usage_text());
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage("missing command");
    };
    match cmd.as_str() {
        "client" => return client_cli::main(&args[1..]),
        "testnet" => return run_testnet(&args[1..]),
        "topology" => return topology_cli::exit(topology_cli::topology(&args[1..]), &usage_text()),
        "operator-keygen" => {
            return topology_cli::exit(topology_cli::operator_keygen(&args[1..]), &usage_text())
        }
        _ => {}
    }
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
            let address = match opts.get("address").map(|a| a.parse()) {
                None => None,
                Some(Ok(a)) => Some(a),
                Some(Err(_)) => return usage("--address must be HOST:PORT, e.g. 192.0.2.7:1789"),
            };
            let first = epoch_at(unix_now_s(), epoch_s);
            keyfile::keygen_at(&PathBuf::from(dir), address, epoch_s, first, epochs)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    for p in &r.created {
                        eprintln!("created {}", p.display());
                    }
                    if r.descriptor.address.is_none() {
                        eprintln!("note: no address yet; run again with --address HOST:PORT before `loopix topology build`");
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
            println!("{}", usage_text());
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
