//! The `loopix` command: `keygen` writes a node's keys, `mix` runs a mix
//! node, `operator-keygen` and `topology` make signed topology documents
//! (`topology_cli.rs`), `client ...` is the Loopix client (see
//! `client_cli`). Errors print one message naming the problem and exit 1;
//! usage mistakes exit 2.

use std::path::PathBuf;
use std::process::ExitCode;

use loopix_engine::client_cli;
use loopix_engine::config::MixConfig;
use loopix_engine::keyfile::{self, epoch_at, unix_now_s};
use loopix_engine::node;

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
      run a mix node (see systemd/mix.example.toml)";

fn usage_text() -> String {
    format!(
        "{USAGE_NODE}\n{}\n{}",
        topology_cli::USAGE,
        client_cli::USAGE
    )
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
        "topology" => return topology_cli::exit(topology_cli::topology(&args[1..]), &usage_text()),
        "operator-keygen" => {
            return topology_cli::exit(topology_cli::operator_keygen(&args[1..]), &usage_text())
        }
        _ => {}
    }
    let mut opts = std::collections::HashMap::new();
    let mut it = args[1..].iter();
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
