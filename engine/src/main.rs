//! The `loopix` command: `keygen` writes a node's keys, `mix` runs a mix
//! node, `client ...` is the Loopix client (see `client_cli`). Errors
//! print one message naming the problem and exit 1; usage mistakes exit 2.

use std::path::PathBuf;
use std::process::ExitCode;

use loopix_engine::client_cli;
use loopix_engine::config::MixConfig;
use loopix_engine::keyfile::{self, epoch_at, unix_now_s};
use loopix_engine::node;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage:
  loopix keygen --dir DIR [--epoch-s SECONDS] [--epochs N]
      write a node's link key and N epoch mix keys (default 3600 s, 24 epochs
      from the current one) into DIR, mode 0600, never overwriting a key;
      prints the public descriptor (also in DIR/node.toml)
  loopix mix --config FILE
      run a mix node (see systemd/mix.example.toml)
{CLIENT}";

fn usage_text() -> String {
    USAGE.replace("{CLIENT}", client_cli::USAGE)
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
    if cmd == "client" {
        return client_cli::main(&args[1..]);
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
