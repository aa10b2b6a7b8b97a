//! `loopix client ...`: the command-line Loopix client. `init` writes a
//! client directory from what the provider's registration printed; `send`,
//! `recv` and `run` put the client online through
//! [`loopix_client::driver::Driver`]; `address` prints the address to give
//! to correspondents.
//!
//! A client directory holds:
//! - `client.key`: the client's X25519 Sphinx secret (hex, mode 0600);
//! - `registration.toml`: slot, mailbox and access key at the provider
//!   (mode 0600: the access key is a secret);
//! - `client.toml`: the topology file's absolute path and the rates
//!   ([`ClientConfig`]);
//! - `address.toml`: the public address.
//!
//! Output for scripts: stdout carries one line per event, `message <n>
//! bytes: <text>` (or `message <n> bytes hex: <hex>` when the bytes are
//! not UTF-8, or `message <n> bytes saved: <path>` with `--out`), `reply
//! <n> bytes: ...` the same way, and `sent <n> bytes in <k> fragments`;
//! progress goes to stderr. Exit codes: 0 done, 1 failed or timed out, 2
//! usage (the arguments are the clap definitions [`ClientCmd`]; clap
//! reports their mistakes). Every online command prints what arrives, because what it pulls is
//! acknowledged and so deleted at the provider.
//!
//! Key epochs: the topology is converted for the current epoch
//! ([`client_topology`]) and re-read from its file whenever the epoch
//! changes while online.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use loopix_client::driver::{self, Driver, Flow};
use loopix_client::{client_topology, Address, Client, ClientLimits, Event, Rates, Registration};
use loopix_crypto::{Geometry, SecretKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};

use loopix_directory::descriptor::epoch_at;
use loopix_directory::topology::{Role, Topology};
use loopix_directory::NetworkParams;
use loopix_engine::keyfile::{read_secret, unix_now_s};

/// How long one `run_until` slice lasts: signals, epochs and exit
/// conditions are looked at between slices.
const SLICE: Duration = Duration::from_millis(100);
/// How often `run` prints its summary.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// `client.toml`: unknown fields are refused.
///
/// A client's rates are its network's, from the signed topology document
/// (`[params]`): a client with rates of its own is told apart by them.
/// `[dev_rates]` overrides them for tests and development, and only where
/// the document allows it (`params.allow_rate_overrides`); the provider
/// refuses such a client otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The topology file (absolute path).
    pub topology: PathBuf,
    /// Development only: rates other than the network's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_rates: Option<DevRates>,
}

/// `[dev_rates]`: a development override of the network's rates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevRates {
    /// Payload stream (real fragments or drops), per second; above 0.
    pub lambda_p: f64,
    /// Loop stream, per second; 0 turns it off.
    pub lambda_l: f64,
    /// Drop stream, per second; 0 turns it off.
    pub lambda_d: f64,
    /// Mean per-hop delay (1/mu), milliseconds; above 0.
    pub mean_delay_ms: f64,
    /// Pull period, milliseconds; at least 1.
    pub pull_ms: u64,
}

impl DevRates {
    /// As network parameters, to check them the way a document's are.
    fn as_params(&self, network: &NetworkParams) -> NetworkParams {
        NetworkParams {
            lambda_p: self.lambda_p,
            lambda_l: self.lambda_l,
            lambda_d: self.lambda_d,
            mean_delay_ms: self.mean_delay_ms,
            pull_period_ms: self.pull_ms,
            ..*network
        }
    }
}

impl ClientConfig {
    /// Check ranges; errors name the field and the fix.
    pub fn check(&self) -> Result<(), String> {
        if let Some(d) = &self.dev_rates {
            d.as_params(&NetworkParams::default())
                .check(3)
                .map_err(|e| format!("[dev_rates]: {}", e.replace("params.", "dev_rates.")))?;
        }
        if !self.topology.is_absolute() {
            return Err(format!(
                "topology must be an absolute path, not {}",
                self.topology.display()
            ));
        }
        Ok(())
    }

    /// Read and check a config file; errors start with the path.
    pub fn load(path: &Path) -> Result<ClientConfig, String> {
        let text = fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let c: ClientConfig = toml::from_str(&text).map_err(|e| {
            let mut m = format!("{}: {}", path.display(), e.to_string().trim_end());
            if [
                "lambda_p",
                "lambda_l",
                "lambda_d",
                "mean_delay_ms",
                "pull_ms",
            ]
            .iter()
            .any(|k| m.contains(&format!("unknown field `{k}`")))
            {
                m.push_str(
                    "\na client's rates are its network's now, from the topology document's \
                     [params]: remove lambda_p, lambda_l, lambda_d, mean_delay_ms and pull_ms \
                     from this file (or put them under [dev_rates], for development only)",
                );
            }
            m
        })?;
        c.check().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(c)
    }

    /// The core's rates: the network's, or `[dev_rates]` where the
    /// document allows overrides.
    pub fn rates(&self, network: &NetworkParams) -> Result<Rates, String> {
        match &self.dev_rates {
            None => Ok(Rates::of_network(network)),
            Some(_) if !network.allow_rate_overrides => Err(format!(
                "client.toml has [dev_rates], but the topology document {} forbids rates other \
                 than the network's (params.allow_rate_overrides = false), and the provider would \
                 refuse this client: remove [dev_rates]",
                self.topology.display()
            )),
            Some(d) => Ok(Rates::of_network(&d.as_params(network))),
        }
    }
}

/// `loopix client ...`.
#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Create a client in DIR from what `provider register` printed.
    ///
    /// Its keys are written mode 0600; prints the address (also in
    /// DIR/address.toml).
    Init(InitArgs),
    /// Send TEXT (or stdin).
    ///
    /// Stays online until every fragment has left, and with --wait-reply
    /// (implies --surb) until the reply arrives (exit 1 if it does not).
    Send(SendArgs),
    /// Print (or save to --out) messages as they arrive.
    ///
    /// --reply answers each message that carried a SURB; exit 0 after
    /// --count messages, 1 on timeout.
    Recv(RecvArgs),
    /// Stay online until SIGINT/SIGTERM: cover traffic, messages, loop summary.
    Run(DirArg),
    /// Print the client's address.
    Address(DirArg),
}

impl ClientCmd {
    /// The subcommand's name, for messages.
    fn name(&self) -> &'static str {
        match self {
            ClientCmd::Init(_) => "init",
            ClientCmd::Send(_) => "send",
            ClientCmd::Recv(_) => "recv",
            ClientCmd::Run(_) => "run",
            ClientCmd::Address(_) => "address",
        }
    }
}

/// `--dir`, which every client command takes.
#[derive(Debug, Args)]
pub struct DirArg {
    /// The client directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// `loopix client init`'s options.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The registration `loopix provider register` printed.
    #[arg(long, value_name = "FILE")]
    registration: PathBuf,
    /// The signed topology document.
    #[arg(long, value_name = "FILE")]
    topology: PathBuf,
    /// Development only: run at rates other than the network's (written
    /// to client.toml as [dev_rates]; the rates not given are the
    /// network's). Refused unless the topology document allows overrides.
    #[arg(long)]
    dev_rates: bool,
    /// With --dev-rates: payload rate (`lambda_p`), per second.
    #[arg(
        long,
        value_name = "PER_S",
        requires = "dev_rates",
        allow_negative_numbers = true
    )]
    lambda_p: Option<f64>,
    /// With --dev-rates: loop rate (`lambda_l`), per second; 0 turns loops off.
    #[arg(
        long,
        value_name = "PER_S",
        requires = "dev_rates",
        allow_negative_numbers = true
    )]
    lambda_l: Option<f64>,
    /// With --dev-rates: drop rate (`lambda_d`), per second; 0 turns drops off.
    #[arg(
        long,
        value_name = "PER_S",
        requires = "dev_rates",
        allow_negative_numbers = true
    )]
    lambda_d: Option<f64>,
    /// With --dev-rates: mean per-hop delay (1/mu), milliseconds.
    #[arg(
        long,
        value_name = "MS",
        requires = "dev_rates",
        allow_negative_numbers = true
    )]
    mu_ms: Option<f64>,
    /// With --dev-rates: pull period, milliseconds.
    #[arg(long, value_name = "MS", requires = "dev_rates")]
    pull_ms: Option<u64>,
}

impl InitArgs {
    /// `[dev_rates]` from the flags, the network's rates where none is given.
    fn dev_rates(&self, network: &NetworkParams) -> Option<DevRates> {
        self.dev_rates.then(|| DevRates {
            lambda_p: self.lambda_p.unwrap_or(network.lambda_p),
            lambda_l: self.lambda_l.unwrap_or(network.lambda_l),
            lambda_d: self.lambda_d.unwrap_or(network.lambda_d),
            mean_delay_ms: self.mu_ms.unwrap_or(network.mean_delay_ms),
            pull_ms: self.pull_ms.unwrap_or(network.pull_period_ms),
        })
    }
}

/// `loopix client send`'s options.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The recipient: an address file, or an address id
    /// (PROVIDER.MAILBOX.KEY); `loopix client address` prints both.
    #[arg(long, value_name = "ADDRESS_FILE_OR_ID")]
    to: String,
    /// Attach a SURB, so that the recipient can reply.
    #[arg(long)]
    surb: bool,
    /// Wait this long for the reply (implies --surb).
    #[arg(long, value_name = "SECONDS", value_parser = seconds, allow_negative_numbers = true)]
    wait_reply: Option<Duration>,
    /// The message; without it, stdin.
    #[arg(value_name = "TEXT")]
    text: Option<String>,
}

/// `loopix client recv`'s options.
#[derive(Debug, Args)]
pub struct RecvArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Exit 0 after this many messages.
    #[arg(long, value_name = "N", value_parser = crate::at_least_one)]
    count: Option<u64>,
    /// Give up after this long (exit 1 if --count messages did not come).
    #[arg(long, value_name = "SECONDS", value_parser = seconds, allow_negative_numbers = true)]
    timeout: Option<Duration>,
    /// Save each message to a file in this directory instead of printing it.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Answer each message that carried a SURB with this text.
    #[arg(long, value_name = "TEXT")]
    reply: Option<String>,
}

/// A duration option: a number of seconds above 0.
fn seconds(v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        Ok(s) => Err(format!("must be above 0 seconds, not {s}")),
        Err(_) => Err("must be a number of seconds".into()),
    }
}

/// Run `loopix client SUBCOMMAND`.
pub fn main(cmd: &ClientCmd) -> ExitCode {
    let outcome = match cmd {
        ClientCmd::Init(a) => init_dir(a),
        ClientCmd::Send(a) => send(a),
        ClientCmd::Recv(a) => recv_online(
            &a.dir.dir,
            a.count,
            a.timeout,
            a.out.as_deref(),
            a.reply.as_deref().map(str::as_bytes),
        ),
        ClientCmd::Run(a) => run_online(&a.dir),
        ClientCmd::Address(a) => address(&a.dir),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("loopix client {}: {msg}", cmd.name());
            ExitCode::FAILURE
        }
    }
}

/// Create `path` with mode 0600, refusing to overwrite.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn write_new(path: &Path, text: &str) -> Result<(), String> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Read a file holding a secret, refusing it if others can read it.
fn read_private(path: &Path) -> Result<String, String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: mode {mode:o} lets others read a secret; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn init_dir(a: &InitArgs) -> Result<(), String> {
    let (dir, reg_path, topo_path) = (&a.dir.dir, &a.registration, &a.topology);
    for name in ["client.key", "registration.toml", "client.toml"] {
        let p = dir.join(name);
        if p.exists() {
            return Err(format!(
                "{} exists: {} already holds a client; choose another --dir \
                 (nothing was changed)",
                p.display(),
                dir.display()
            ));
        }
    }
    let reg_text = fs::read_to_string(reg_path)
        .map_err(|e| format!("{}: cannot read: {e}", reg_path.display()))?;
    let reg = Registration::parse(&reg_text)
        .map_err(|e| format!("{}: {}", reg_path.display(), e.trim_end()))?;
    let topology_abs = fs::canonicalize(topo_path)
        .map_err(|e| format!("{}: cannot read: {e}", topo_path.display()))?;
    let topology = Topology::load(&topology_abs, &reg.operator_key, unix_now_s())
        .map_err(|e| e.to_string())?;
    let config = ClientConfig {
        topology: topology_abs,
        dev_rates: a.dev_rates(&topology.params),
    };
    config
        .check()
        .map_err(|e| format!("{e} (from the command-line options)"))?;
    config.rates(&topology.params)?;
    check_provider(&topology, &reg, reg_path)?;
    let epoch = epoch_at(unix_now_s(), topology.epoch_s);
    client_topology(&topology, epoch).map_err(|e| format!("{}: {e}", topo_path.display()))?;

    let secret = SecretKey::generate(&mut OsRng);
    let address = Address {
        provider: reg.provider_id,
        mailbox: reg.mailbox,
        key: secret.public_key(),
    };
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_private(
        &dir.join("client.key"),
        &format!("{}\n", hex::encode(secret.to_bytes())),
    )?;
    write_private(&dir.join("registration.toml"), &reg.to_toml())?;
    let config_text = format!(
        "# loopix client config (written by `loopix client init`).\n\
         # The client's rates are its network's, from the topology document's [params].\n{}",
        toml::to_string(&config).map_err(|e| format!("client.toml: {e}"))?
    );
    write_new(&dir.join("client.toml"), &config_text)?;
    let address_path = dir.join("address.toml");
    // The address is public and derived: rewrite it if a stale one is there.
    fs::write(&address_path, address.to_toml())
        .map_err(|e| format!("{}: {e}", address_path.display()))?;
    eprintln!("created client in {}", dir.display());
    print!("{}", address.to_toml());
    Ok(())
}

fn check_provider(topology: &Topology, reg: &Registration, reg_path: &Path) -> Result<(), String> {
    let is_provider = topology
        .nodes
        .iter()
        .any(|n| n.id == reg.provider_id && n.role == Role::Provider);
    if is_provider {
        Ok(())
    } else {
        Err(format!(
            "{}: provider_id {} is not a provider in the topology; \
             register with a provider the topology lists",
            reg_path.display(),
            reg.provider_id
        ))
    }
}

fn address(dir: &Path) -> Result<(), String> {
    let p = dir.join("address.toml");
    let t = fs::read_to_string(&p)
        .map_err(|e| format!("{}: {e}; run `loopix client init` first", p.display()))?;
    print!("{t}");
    Ok(())
}

/// A client directory loaded and online.
struct Online {
    driver: Driver,
    topology_path: PathBuf,
    topology: Topology,
    epoch: u64,
    stop: Arc<AtomicBool>,
}

impl Online {
    fn open(dir: &Path) -> Result<Online, String> {
        Self::open_checked(dir, |_| Ok(()))
    }

    /// Open the client in `dir`, refusing before it goes online what
    /// `check` refuses for the network's packet geometry.
    fn open_checked(
        dir: &Path,
        check: impl FnOnce(&Geometry) -> Result<(), String>,
    ) -> Result<Online, String> {
        let config = ClientConfig::load(&dir.join("client.toml"))?;
        let secret = read_secret(&dir.join("client.key")).map_err(|e| e.to_string())?;
        let reg_path = dir.join("registration.toml");
        let reg = Registration::parse(&read_private(&reg_path)?)
            .map_err(|e| format!("{}: {}", reg_path.display(), e.trim_end()))?;
        let topology = Topology::load(&config.topology, &reg.operator_key, unix_now_s())
            .map_err(|e| e.to_string())?;
        check_provider(&topology, &reg, &reg_path)?;
        let epoch = epoch_at(unix_now_s(), topology.epoch_s);
        let view = client_topology(&topology, epoch)
            .map_err(|e| format!("{}: {e}", config.topology.display()))?;
        let geometry = topology.params.geometry()?;
        check(&geometry)?;
        let rates = config.rates(&topology.params)?;
        let client = Client::new(
            geometry,
            Arc::new(view),
            rates,
            ClientLimits::default(),
            secret,
            reg.mailbox,
            reg.provider_id,
            driver::now_us(),
            &mut OsRng,
        )
        .map_err(|e| format!("{}: {e}", config.topology.display()))?;
        let socket =
            bind_for(reg.provider_address).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        let driver =
            Driver::new(client, &reg, geometry, socket).map_err(|e| format!("driver: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&stop))
                .map_err(|e| format!("cannot install a signal handler: {e}"))?;
        }
        eprintln!(
            "online: provider {} at {}, mailbox {}",
            reg.provider_id, reg.provider_address, reg.mailbox
        );
        Ok(Online {
            driver,
            topology_path: config.topology,
            topology,
            epoch,
            stop,
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// On a new key epoch, re-read the topology file and switch to the new
    /// keys; on failure keep the old ones and say why.
    fn refresh_epoch(&mut self) {
        let epoch = epoch_at(unix_now_s(), self.topology.epoch_s);
        if epoch == self.epoch {
            return;
        }
        self.epoch = epoch;
        // The successor must keep the network's parameters.
        match self.topology.reload(&self.topology_path, unix_now_s()) {
            Ok(t) => self.topology = t,
            Err(e) => eprintln!("epoch {epoch}: keeping the old topology: {e}"),
        }
        let result = client_topology(&self.topology, epoch).and_then(|v| {
            self.driver
                .client_mut()
                .set_topology(Arc::new(v))
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(()) => eprintln!("epoch {epoch}: switched to its keys"),
            Err(e) => eprintln!(
                "epoch {epoch}: still using the previous epoch's keys: {}: {e}",
                self.topology_path.display()
            ),
        }
    }

    /// One slice online.
    /// Before going offline: stay until the acknowledgements of what this
    /// session received have left in a pull, at the pull schedule (an extra
    /// pull would stand out), for at most three pull periods; events that
    /// arrive meanwhile go to `on_event`.
    fn settle(
        &mut self,
        mut on_event: impl FnMut(&mut Client, Event) -> Flow,
    ) -> Result<(), String> {
        let period = Duration::from_micros(self.driver.client().rates().pull_period_us);
        let end = Instant::now() + 3 * period;
        while self.driver.acks_pending() > 0 && Instant::now() < end {
            self.step(&mut on_event)?;
        }
        // The pull that carried them is answered within the provider's
        // answer delay; let that answer arrive rather than be refused.
        self.step(&mut on_event)
    }

    fn step(&mut self, on_event: impl FnMut(&mut Client, Event) -> Flow) -> Result<(), String> {
        self.refresh_epoch();
        self.driver
            .run_until(Instant::now() + SLICE, on_event)
            .map(|_| ())
            .map_err(|e| format!("socket: {e}"))
    }
}

/// A socket for talking to `provider`: on loopback if it is there (tests
/// and local networks stay on loopback), else on every interface.
fn bind_for(provider: SocketAddr) -> std::io::Result<UdpSocket> {
    let ip = match provider.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    UdpSocket::bind(SocketAddr::new(ip, 0))
}

/// The stdout line for a message or reply.
fn show(what: &str, data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) => format!("{what} {} bytes: {text}", data.len()),
        Err(_) => format!("{what} {} bytes hex: {}", data.len(), hex::encode(data)),
    }
}

fn send(a: &SendArgs) -> Result<(), String> {
    let data = match &a.text {
        Some(t) => t.as_bytes().to_vec(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read the message from stdin: {e}"))?;
            buf
        }
    };
    let with_surb = a.surb || a.wait_reply.is_some();
    send_online(&a.dir.dir, &a.to, &data, with_surb, a.wait_reply)
}

/// `--to`: an address file, or an address id (`PROVIDER.MAILBOX.KEY`).
fn recipient(to: &str) -> Result<Address, String> {
    let path = Path::new(to);
    if path.exists() {
        let text = fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        return Address::parse(&text).map_err(|e| format!("{}: {}", path.display(), e.trim_end()));
    }
    Address::parse_id(to).map_err(|e| {
        format!(
            "--to {to:?}: not an address file, and not an address id ({e}); \
             `loopix client address` prints both"
        )
    })
}

fn send_online(
    dir: &Path,
    to: &str,
    data: &[u8],
    with_surb: bool,
    wait: Option<Duration>,
) -> Result<(), String> {
    let to = recipient(to)?;
    let mut online = Online::open_checked(dir, |g| {
        Client::check_length(g, &ClientLimits::default(), data.len(), with_surb)
            .map_err(|e| e.to_string())
    })?;
    online
        .driver
        .client_mut()
        .send(to, data, with_surb, &mut OsRng)
        .map_err(|e| e.to_string())?;
    let fragments = online.driver.queued();
    eprintln!("sending {} bytes in {fragments} fragments", data.len());
    let mut reply: Option<Vec<u8>> = None;
    while online.driver.queued() > 0 {
        if online.stopped() {
            return Err("interrupted before every fragment left".into());
        }
        online.step(|_, e| print_event(e, &mut reply))?;
    }
    println!("sent {} bytes in {fragments} fragments", data.len());
    let Some(wait) = wait else { return Ok(()) };
    let end = Instant::now() + wait;
    while Instant::now() < end && !online.stopped() {
        online.step(|_, e| print_event(e, &mut reply))?;
        if reply.is_some() {
            return Ok(());
        }
    }
    Err(format!("no reply within {} s", wait.as_secs_f64()))
}

/// Print a message or reply; remember the reply.
fn print_event(e: Event, reply: &mut Option<Vec<u8>>) -> Flow {
    match e {
        Event::Message { data, .. } => println!("{}", show("message", &data)),
        Event::Reply { data, .. } => {
            println!("{}", show("reply", &data));
            *reply = Some(data);
        }
        Event::LoopReturned { .. } | Event::Pull { .. } => {}
    }
    Flow::Continue
}

fn recv_online(
    dir: &Path,
    count: Option<u64>,
    timeout: Option<Duration>,
    out: Option<&Path>,
    reply: Option<&[u8]>,
) -> Result<(), String> {
    if let Some(out) = out {
        fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let mut online = Online::open(dir)?;
    let end = timeout.map(|t| Instant::now() + t);
    let mut r = Receiver {
        out,
        reply,
        received: 0,
        failure: None,
        seen: SeenIds::load(&dir.join(SEEN_FILE))?,
    };
    loop {
        online.step(|c, e| r.handle(c, e))?;
        if let Some(f) = r.failure.take() {
            return Err(f);
        }
        if count.is_some_and(|n| r.received >= n) {
            // Stay until the replies have left.
            while online.driver.queued() > 0 && !online.stopped() {
                online.step(|c, e| r.handle(c, e))?;
            }
            online.settle(|c, e| r.handle(c, e))?;
            return Ok(());
        }
        let timed_out = end.is_some_and(|end| Instant::now() >= end);
        if timed_out || online.stopped() {
            online.settle(|c, e| r.handle(c, e))?;
            return match count {
                Some(n) => Err(format!(
                    "{} after {} of {n} messages",
                    if timed_out {
                        "timed out"
                    } else {
                        "interrupted"
                    },
                    r.received
                )),
                None => Ok(()),
            };
        }
    }
}

/// The client directory's journal of messages `recv` has shown.
const SEEN_FILE: &str = "seen.ids";
/// Message ids the journal keeps (the newest): far more than a provider
/// holds unacknowledged for one client.
const SEEN_KEEP: usize = 4096;

/// Ids of the messages shown in this and earlier sessions, so that one the
/// provider offers again (its acknowledgement never reached it, or was lost
/// in a crash before it was durable) is not shown twice. Appended one hex
/// line per message as it is shown; trimmed to the newest [`SEEN_KEEP`] at
/// load.
struct SeenIds {
    path: PathBuf,
    ids: std::collections::HashSet<[u8; 16]>,
}

impl SeenIds {
    fn load(path: &Path) -> Result<SeenIds, String> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let lines: Vec<&str> = text.lines().collect();
        let newest = &lines[lines.len().saturating_sub(SEEN_KEEP)..];
        let mut ids = std::collections::HashSet::new();
        for line in newest {
            let mut id = [0u8; 16];
            // A damaged line is skipped: at worst one message shows twice.
            if hex::decode_to_slice(line.trim(), &mut id).is_ok() {
                ids.insert(id);
            }
        }
        if newest.len() < lines.len() {
            let kept: String = newest.iter().map(|l| format!("{l}\n")).collect();
            fs::write(path, kept).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(SeenIds {
            path: path.to_owned(),
            ids,
        })
    }

    /// Record `id`; false if it was shown before.
    fn first_time(&mut self, id: [u8; 16]) -> Result<bool, String> {
        if !self.ids.insert(id) {
            return Ok(false);
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        f.write_all(format!("{}\n", hex::encode(id)).as_bytes())
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(true)
    }
}

/// What `recv` does with each event.
struct Receiver<'a> {
    out: Option<&'a Path>,
    reply: Option<&'a [u8]>,
    received: u64,
    failure: Option<String>,
    seen: SeenIds,
}

impl Receiver<'_> {
    fn handle(&mut self, c: &mut Client, e: Event) -> Flow {
        match e {
            Event::Message { id, data, surb } => {
                match self.seen.first_time(id) {
                    Ok(true) => {}
                    Ok(false) => {
                        eprintln!("a message shown in an earlier session came again; skipped");
                        return Flow::Continue;
                    }
                    Err(e) => {
                        self.failure = Some(e);
                        return Flow::Stop;
                    }
                }
                self.received += 1;
                let n = self.received;
                match self.out {
                    Some(out) => {
                        let p = out.join(format!("{n:06}-{}.msg", hex::encode(id)));
                        match fs::write(&p, &data) {
                            Ok(()) => {
                                println!("message {} bytes saved: {}", data.len(), p.display())
                            }
                            Err(e) => {
                                self.failure = Some(format!("{}: {e}", p.display()));
                                return Flow::Stop;
                            }
                        }
                    }
                    None => println!("{}", show("message", &data)),
                }
                if let (Some(text), Some(surb)) = (self.reply, surb) {
                    match c.reply(surb, text) {
                        Ok(()) => eprintln!("replying to message {n}"),
                        Err(e) => eprintln!("cannot reply to message {n}: {e}"),
                    }
                }
            }
            Event::Reply { data, .. } => println!("{}", show("reply", &data)),
            Event::LoopReturned { .. } | Event::Pull { .. } => {}
        }
        Flow::Continue
    }
}

fn run_online(dir: &Path) -> Result<(), String> {
    let mut online = Online::open(dir)?;
    // Messages shown by this or an earlier `recv` or `run` are not shown
    // again (as `recv`).
    let mut seen = SeenIds::load(&dir.join(SEEN_FILE))?;
    let mut failure = None;
    let started = Instant::now();
    let mut next_summary = started + SUMMARY_EVERY;
    let mut rtts: Vec<u64> = Vec::new();
    while !online.stopped() {
        online.step(|_, e| {
            match e {
                Event::Message { id, data, .. } => match seen.first_time(id) {
                    Ok(true) => println!("{}", show("message", &data)),
                    Ok(false) => {
                        eprintln!("a message shown in an earlier session came again; skipped")
                    }
                    Err(e) => failure = Some(e),
                },
                Event::Reply { data, .. } => println!("{}", show("reply", &data)),
                Event::LoopReturned { rtt_us } => rtts.push(rtt_us),
                Event::Pull { .. } => {}
            }
            Flow::Continue
        })?;
        if let Some(e) = failure.take() {
            return Err(e);
        }
        if Instant::now() >= next_summary {
            next_summary += SUMMARY_EVERY;
            let c = online.driver.client().stats();
            let d = online.driver.stats();
            let rtt = if rtts.is_empty() {
                "no loop back in this period".to_string()
            } else {
                rtts.sort_unstable();
                format!(
                    "loop round trip median {:.1} ms, max {:.1} ms ({} loops)",
                    rtts[rtts.len() / 2] as f64 / 1e3,
                    rtts[rtts.len() - 1] as f64 / 1e3,
                    rtts.len()
                )
            };
            rtts.clear();
            eprintln!(
                "{} s online: sent {} packets ({} real, {} replies, {} drops, {} loops), \
                 {} late; {} pulls; {} messages; loops back {} of {}; {rtt}",
                started.elapsed().as_secs(),
                d.packets_sent,
                c.sent_real,
                c.sent_reply,
                c.sent_drop,
                c.sent_loop,
                d.packets_late,
                d.pulls_sent,
                c.messages_received,
                c.loops_received,
                c.sent_loop,
            );
        }
    }
    eprintln!("stopping");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopix_testkit::localnet::{LocalNet, LocalNetSpec};

    #[test]
    fn client_topology_names_a_node_without_the_epoch_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = LocalNetSpec {
            layers: 2,
            ..LocalNetSpec::default()
        };
        let net = LocalNet::create(dir.path(), &spec).expect("lay out");
        let mut topology = net.topology().expect("topology");
        let epoch = epoch_at(unix_now_s(), topology.epoch_s);
        let view = client_topology(&topology, epoch).expect("every key present");
        assert_eq!(view.layers.len(), 2);
        assert_eq!(view.providers.len(), 1);
        topology.nodes[2].mix_keys.remove(&epoch);
        let e = client_topology(&topology, epoch)
            .err()
            .expect("a node lacks the key");
        assert!(e.contains("node 2") && e.contains("epoch"), "{e}");
    }
}
