//! The `loopix` command: `keygen` writes a node's keys, `mix` runs a mix
//! node, `provider` runs a provider and `provider register|unregister|
//! clients` manage its clients, `operator-keygen` and `topology` make
//! signed topology documents (`topology_cli.rs`), `client ...` is the
//! Loopix client (see `client_cli`), `testnet` runs a whole network on
//! loopback (`loopix_testkit::testnet`), `tune` the anonymity simulator
//! (`tune_cli.rs`, `tune recommend` in `tune_recommend.rs`, the live
//! anonymity meter `tune live` in `tune_live.rs`), `doctor` the host
//! readiness checks (`doctor_cli.rs`), `completions` and `man` print a
//! shell completion script and the man page (`man --dir DIR` writes a page
//! for every subcommand too).
//!
//! The arguments are clap definitions (`Cli` and the types it names), so
//! `--help` works on every command and usage mistakes print clap's message
//! naming the flag and exit 2. Runtime errors print one message naming the
//! problem and exit 1.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use loopix_directory::descriptor::epoch_at;
use loopix_engine::config::MixConfig;
use loopix_engine::keyfile::{self, unix_now_s};
use loopix_engine::node;
use loopix_engine::provider;
use loopix_testkit::testnet::{self, TestnetOptions};

mod client_cli;
mod doctor_cli;
mod topology_cli;
mod tune_cli;
mod tune_live;
mod tune_recommend;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Loopix mixnet: node keys, mix and provider nodes, signed topology
/// documents, the client, and a whole test network on loopback.
#[derive(Debug, Parser)]
#[command(name = "loopix", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write a node's identity key, link key and epoch mix keys into DIR.
    ///
    /// Writes the identity key, the link key and --epochs epoch mix keys
    /// (from the current epoch) into DIR, mode 0600, never overwriting a
    /// key; prints the signed public descriptor (also in DIR/node.toml).
    /// --address is needed once; later runs keep it.
    Keygen(KeygenArgs),
    /// Run a mix node (see systemd/mix.example.toml).
    ///
    /// SIGHUP reloads node.topology (a document that does not check is
    /// refused).
    Mix(ConfigArg),
    /// Run a provider (see systemd/provider.example.toml), or manage its
    /// clients.
    ///
    /// SIGHUP reloads node.topology and rescans its client registry at once.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Provider {
        /// The node's config file.
        #[arg(long, value_name = "FILE", required = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        admin: Option<ProviderAdmin>,
    },
    /// Write a new operator key to FILE and its public key to FILE.pub.
    ///
    /// FILE is mode 0600 and never overwritten; prints the public key for
    /// node.operator_key.
    OperatorKeygen(topology_cli::OperatorKeygenArgs),
    /// Build, show and verify signed topology documents.
    #[command(subcommand)]
    Topology(topology_cli::TopologyCmd),
    /// The Loopix client: init, send, recv, run, address.
    #[command(subcommand)]
    Client(client_cli::ClientCmd),
    /// Start a whole network on loopback and exchange real messages.
    ///
    /// Default 2 providers, 3 layers of 2 mixes, 24 clients, 30 s; every
    /// node sends its own loops at --lambda-m per second. Prints a summary
    /// with delivery, latency against the Poisson model, and each node's
    /// loops sent and returned. With --clients 0 --keep DIR it serves the
    /// network alone for `loopix-loadgen --testnet DIR` until the duration
    /// ends or Ctrl-C. Exit 0 on a clean run, 1 on a failure (a node that
    /// died, lost messages), 130 when interrupted.
    Testnet(TestnetOptions),
    /// The anonymity simulator of the paper's section 4.3: ε for given
    /// delays, layers and corruption, at one point or over a sweep.
    #[command(subcommand)]
    Tune(tune_cli::TuneCmd),
    /// Check this host's readiness to run a node: io_uring, CPU features,
    /// memlock, socket buffers, clock source, cores.
    ///
    /// Each check prints ok, warn or fail, and the fix when not ok. Exit 0
    /// when nothing fails (warnings allowed), 1 when a check fails.
    Doctor(doctor_cli::DoctorArgs),
    /// Print a shell completion script to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    Man {
        /// Instead, write loopix.1 and a page for every subcommand
        /// (loopix-keygen.1, loopix-topology-build.1, ...) into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `--config`, which every node command takes.
#[derive(Debug, Args)]
struct ConfigArg {
    /// The node's config file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum ProviderAdmin {
    /// Register a client; print its registration (or write it to --out).
    Register {
        #[command(flatten)]
        config: ConfigArg,
        /// A name for the client, shown by `provider clients`.
        #[arg(
            long,
            value_name = "NAME",
            default_value = "",
            hide_default_value = true
        )]
        name: String,
        /// Write the registration to this new file (mode 0600) instead.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Remove the client in slot N (its stored messages are dropped).
    Unregister {
        #[command(flatten)]
        config: ConfigArg,
        /// The client's slot.
        #[arg(long, value_name = "N")]
        slot: u32,
    },
    /// List registered clients: slot, name, mailbox.
    Clients {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `loopix keygen`'s options.
#[derive(Debug, Args)]
struct KeygenArgs {
    /// The key directory (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The node's public address, e.g. 192.0.2.7:1789; needed once before
    /// `loopix topology build`, later runs keep it.
    #[arg(long, value_name = "HOST:PORT")]
    address: Option<SocketAddr>,
    /// Length of a key epoch, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = at_least_one)]
    epoch_s: u64,
    /// Epoch mix keys to write, from the current epoch.
    #[arg(long, value_name = "N", default_value_t = 24)]
    epochs: u64,
}

/// A whole-number option that must be at least 1.
fn at_least_one(v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number, at least 1".into()),
    }
}

/// A command's failure: a usage mistake clap cannot see (exit 2) or a
/// runtime failure (exit 1).
pub enum CliError {
    /// Wrong arguments.
    Usage(String),
    /// The command failed; the message names the file and the fix.
    Failed(String),
}

impl From<String> for CliError {
    fn from(s: String) -> Self {
        CliError::Failed(s)
    }
}

/// Print a usage mistake the way clap prints its own, for the command at
/// `path` (`["topology", "build"]`), and give exit status 2.
fn usage_error(path: &[&str], msg: &str) -> ExitCode {
    let mut sub = Cli::command();
    sub.build();
    for name in path {
        match sub.find_subcommand(name) {
            Some(s) => sub = s.clone(),
            None => break,
        }
    }
    let _ = sub
        .error(clap::error::ErrorKind::ValueValidation, msg)
        .print();
    ExitCode::from(2)
}

/// The exit status for a command's result, printing its message.
fn finish(path: &[&str], result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => usage_error(path, &msg),
        Err(CliError::Failed(msg)) => {
            eprintln!("loopix: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `loopix testnet`: exit 0 on a clean run, 1 on a failure (a node that
/// died, lost messages), 130 when interrupted, 2 on a usage mistake.
fn run_testnet(opts: &TestnetOptions) -> ExitCode {
    if let Err(e) = opts.check() {
        return usage_error(&["testnet"], &e);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, std::sync::Arc::clone(&stop)) {
            eprintln!("loopix: signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    match testnet::run(opts, std::sync::Arc::clone(&stop)) {
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

/// `loopix keygen`.
fn keygen(a: &KeygenArgs) -> Result<(), CliError> {
    let first = epoch_at(unix_now_s(), a.epoch_s);
    let r = keyfile::keygen_at(&a.dir, a.address, a.epoch_s, first, a.epochs)
        .map_err(|e| e.to_string())?;
    for p in &r.created {
        eprintln!("created {}", p.display());
    }
    if r.descriptor.address.is_none() {
        eprintln!(
            "note: no address yet; run again with --address HOST:PORT before `loopix topology build`"
        );
    }
    print!(
        "{}",
        toml::to_string(&r.descriptor).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// `loopix provider register|unregister|clients`.
fn provider_admin(admin: &ProviderAdmin) -> Result<(), CliError> {
    let (ProviderAdmin::Register { config, .. }
    | ProviderAdmin::Unregister { config, .. }
    | ProviderAdmin::Clients { config }) = admin;
    let config = MixConfig::load(&config.config).map_err(|e| e.to_string())?;
    match admin {
        ProviderAdmin::Register { name, out, .. } => {
            if let Some(o) = out.as_ref().filter(|o| o.exists()) {
                return Err(CliError::Usage(format!(
                    "--out {}: the file exists; name a new file",
                    o.display()
                )));
            }
            let r = provider::register(&config, name)?;
            eprintln!("registered slot {} mailbox {}", r.slot, r.mailbox);
            match out {
                Some(o) => provider::write_registration(o, &r)?,
                None => print!("{}", r.to_toml()),
            }
        }
        ProviderAdmin::Unregister { slot, .. } => {
            let e = provider::unregister(&config, *slot)?;
            eprintln!(
                "removed slot {} ({}) mailbox {}; a running provider drops its messages within a second",
                e.slot, e.name, e.mailbox
            );
        }
        ProviderAdmin::Clients { .. } => {
            let (text, problems) = provider::list(&config)?;
            print!("{text}");
            for p in problems {
                eprintln!("loopix: {p}");
            }
        }
    }
    Ok(())
}

/// `loopix mix` and `loopix provider`: load the config and run the node.
fn run_node(path: &std::path::Path, run: fn(&MixConfig) -> Result<(), String>) -> ExitCode {
    let result = MixConfig::load(path)
        .map_err(|e| e.to_string())
        .and_then(|c| run(&c));
    finish(&[], result.map_err(CliError::Failed))
}

/// `loopix completions SHELL` and `loopix man [--dir DIR]`.
fn generated(shell: Option<clap_complete::Shell>, man_dir: Option<&std::path::Path>) -> ExitCode {
    let mut cmd = Cli::command();
    if let Some(dir) = man_dir {
        let result = clap_mangen::generate_to(cmd, dir)
            .map_err(|e| CliError::Failed(format!("{}: {e}", dir.display())));
        return finish(&[], result);
    }
    let mut out = std::io::stdout().lock();
    let written = match shell {
        Some(shell) => {
            clap_complete::generate(shell, &mut cmd, "loopix", &mut out);
            Ok(())
        }
        None => clap_mangen::Man::new(cmd).render(&mut out),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => finish(&[], Err(CliError::Failed(format!("stdout: {e}")))),
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Keygen(a) => finish(&["keygen"], keygen(&a)),
        Cmd::Mix(a) => run_node(&a.config, node::run_mix),
        Cmd::Provider {
            admin: Some(admin), ..
        } => {
            let name = match admin {
                ProviderAdmin::Register { .. } => "register",
                ProviderAdmin::Unregister { .. } => "unregister",
                ProviderAdmin::Clients { .. } => "clients",
            };
            finish(&["provider", name], provider_admin(&admin))
        }
        Cmd::Provider { config, .. } => match config {
            Some(path) => run_node(&path, node::run_provider),
            // clap requires --config when there is no subcommand.
            None => usage_error(&["provider"], "provider needs --config FILE"),
        },
        Cmd::OperatorKeygen(a) => finish(&["operator-keygen"], topology_cli::operator_keygen(&a)),
        Cmd::Topology(t) => finish(&["topology", t.name()], topology_cli::topology(&t)),
        Cmd::Client(c) => client_cli::main(&c),
        Cmd::Testnet(opts) => run_testnet(&opts),
        Cmd::Tune(t) => finish(&["tune", t.name()], tune_cli::tune(&t)),
        Cmd::Doctor(a) => finish(&["doctor"], doctor_cli::doctor(&a)),
        Cmd::Completions { shell } => generated(Some(shell), None),
        Cmd::Man { dir } => generated(None, dir.as_deref()),
    }
}
