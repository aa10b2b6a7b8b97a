//! `loopix operator-keygen` and `loopix topology build | show | verify`: the
//! operator's side of signed topology documents (`docs/topology.md`). The
//! arguments are clap definitions ([`OperatorKeygenArgs`], [`TopologyCmd`]);
//! `main.rs` parses them.
//!
//! Every command returns `Err(message)` phrased for the operator (exit 1) or
//! a usage mistake clap cannot see, such as a layer beyond `--layers` (exit
//! 2); nothing here panics on a file's content.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use loopix_crypto::IdentityPublic;
use loopix_directory::descriptor::{epoch_at, NodeDescriptor};
use loopix_directory::params::MAX_LAYERS;
use loopix_directory::topology::{BuildParams, Role, Topology, TopologyFile};
use loopix_directory::NetworkParams;
use loopix_engine::keyfile::{self, unix_now_s};

use crate::CliError;

/// `loopix operator-keygen`'s options.
#[derive(Debug, Args)]
pub struct OperatorKeygenArgs {
    /// The operator's secret key file to create (mode 0600, never
    /// overwritten); its public key goes to FILE.pub.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// `loopix topology ...`.
#[derive(Debug, Subcommand)]
pub enum TopologyCmd {
    /// Sign a topology document.
    ///
    /// Each DESCRIPTOR is a key directory or its node.toml (from `loopix
    /// keygen --address`); LAYER is 0 (or `provider`) for a provider, 1..L
    /// for a mix. The serial defaults to the current unix time (or one above
    /// FILE's), the validity to 7 days from 5 minutes ago.
    Build(BuildArgs),
    /// Print layers, nodes, epochs, validity and whether the signatures verify.
    Show {
        /// The topology document.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Check the signatures against this operator public key (hex, or a
        /// .pub file) instead of the document's own.
        #[arg(long, value_name = "KEY")]
        operator_pub: Option<String>,
    },
    /// Exit 0 if FILE verifies against KEY now, else 1.
    Verify {
        /// The topology document.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The operator public key: 64 hex digits, or a .pub file.
        #[arg(long, value_name = "KEY")]
        operator_pub: String,
    },
}

impl TopologyCmd {
    /// The subcommand's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            TopologyCmd::Build(_) => "build",
            TopologyCmd::Show { .. } => "show",
            TopologyCmd::Verify { .. } => "verify",
        }
    }
}

/// `loopix topology build`'s options.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The operator's secret key (from `loopix operator-keygen`).
    #[arg(long, value_name = "FILE")]
    operator_key: PathBuf,
    /// Mix layers, 1 to 10 (the packet geometry is chosen to hold a path
    /// through them: layers + 3 Sphinx hops).
    #[arg(long, value_name = "L", value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_LAYERS)))]
    layers: u8,
    /// The document to write (atomically: beside it, then renamed).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The serial; default the current unix time, or one above FILE's.
    #[arg(long, value_name = "N")]
    serial: Option<u64>,
    /// Days of validity, 1 to 3650.
    #[arg(
        long,
        value_name = "D",
        default_value_t = 7,
        value_parser = clap::value_parser!(u64).range(1..=3650)
    )]
    valid_days: u64,
    /// The nodes, each LAYER:DESCRIPTOR (e.g. 0:keys/provider or
    /// 1:keys/mix-a/node.toml).
    #[arg(value_name = "LAYER:DESCRIPTOR", required = true)]
    nodes: Vec<String>,
    #[command(flatten)]
    network: NetworkArgs,
}

/// The network's parameters `topology build` signs into the document
/// (`[params]`, docs/topology.md): every client and node takes them from
/// there.
#[derive(Debug, Args)]
#[command(next_help_heading = "Network parameters (every client and node uses these)")]
pub struct NetworkArgs {
    /// Mean per-hop delay (1/µ), milliseconds.
    #[arg(long, value_name = "MS", default_value_t = NetworkParams::default().mean_delay_ms, allow_negative_numbers = true)]
    mean_delay_ms: f64,
    /// Each client's payload stream (λP), per second.
    #[arg(long, value_name = "R", default_value_t = NetworkParams::default().lambda_p, allow_negative_numbers = true)]
    lambda_p: f64,
    /// Each client's loop stream (λL), per second.
    #[arg(long, value_name = "R", default_value_t = NetworkParams::default().lambda_l, allow_negative_numbers = true)]
    lambda_l: f64,
    /// Each client's drop stream (λD), per second.
    #[arg(long, value_name = "R", default_value_t = NetworkParams::default().lambda_d, allow_negative_numbers = true)]
    lambda_d: f64,
    /// Each node's own loops (λM), per second (default 10 per minute).
    #[arg(long, value_name = "R", default_value_t = NetworkParams::default().lambda_m, hide_default_value = true, allow_negative_numbers = true)]
    lambda_m: f64,
    /// How often clients pull their inbox, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = NetworkParams::default().pull_period_ms)]
    pull_period_ms: u64,
    /// Frames in every pull answer (k).
    #[arg(long, value_name = "K", default_value_t = NetworkParams::default().pull_frames)]
    pull_frames: u16,
    /// The path MTU every datagram must fit, bytes.
    #[arg(long, value_name = "BYTES", default_value_t = NetworkParams::default().mtu)]
    mtu: u32,
    /// Sphinx hops a header holds (default: layers + 3).
    #[arg(long, value_name = "N")]
    max_hops: Option<u8>,
    /// Payload bytes of a packet (default: 1056, less where a long header
    /// would push a frame past the MTU).
    #[arg(long, value_name = "BYTES")]
    payload_len: Option<u32>,
    /// Let clients use other rates than these (tests and development only:
    /// such a client is told apart by its rates).
    #[arg(long)]
    allow_rate_overrides: bool,
}

impl NetworkArgs {
    /// The parameters for `layers` mix layers (checked when the document
    /// is built, each error naming the field).
    fn params(&self, layers: u8) -> NetworkParams {
        let mut p = NetworkParams {
            mean_delay_ms: self.mean_delay_ms,
            lambda_p: self.lambda_p,
            lambda_l: self.lambda_l,
            lambda_d: self.lambda_d,
            lambda_m: self.lambda_m,
            pull_period_ms: self.pull_period_ms,
            pull_frames: self.pull_frames,
            mtu: self.mtu,
            allow_rate_overrides: self.allow_rate_overrides,
            ..NetworkParams::default()
        };
        p.set_geometry_for(layers);
        if let Some(h) = self.max_hops {
            p.max_hops = h;
        }
        if let Some(len) = self.payload_len {
            p.payload_len = len;
        }
        p
    }
}

/// `loopix operator-keygen --out FILE`.
pub fn operator_keygen(a: &OperatorKeygenArgs) -> Result<(), CliError> {
    let public = keyfile::operator_keygen(&a.out).map_err(|e| e.to_string())?;
    eprintln!(
        "created {} (secret, mode 0600) and {}.pub",
        a.out.display(),
        a.out.display()
    );
    println!("{public}");
    Ok(())
}

/// `loopix topology SUBCOMMAND ...`.
pub fn topology(cmd: &TopologyCmd) -> Result<(), CliError> {
    match cmd {
        TopologyCmd::Build(a) => build(a),
        TopologyCmd::Show { file, operator_pub } => show(file, operator_pub.as_deref()),
        TopologyCmd::Verify { file, operator_pub } => verify(file, operator_pub),
    }
}

/// A public key given as hex or as a file holding hex (an operator's `.pub`).
fn operator_public(value: &str) -> Result<IdentityPublic, CliError> {
    if let Ok(k) = IdentityPublic::from_hex(value) {
        return Ok(k);
    }
    let path = Path::new(value);
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{value}: {e}"))?;
        return IdentityPublic::from_hex(&text)
            .map_err(|e| CliError::Failed(format!("{value}: not an operator public key: {e}")));
    }
    Err(CliError::Usage(format!(
        "--operator-pub {value:?} is neither 64 hex digits nor a readable .pub file"
    )))
}

/// `LAYER:PATH` into role, layer and descriptor.
fn placement(spec: &str, layers: u8) -> Result<(NodeDescriptor, Role, u8), CliError> {
    let Some((layer, path)) = spec.split_once(':') else {
        return Err(CliError::Usage(format!(
            "{spec:?}: write LAYER:PATH, e.g. 0:keys/provider or 1:keys/mix-a/node.toml"
        )));
    };
    let (role, layer) = match layer {
        "provider" | "0" => (Role::Provider, 0),
        l => match l.parse::<u8>() {
            Ok(n) if (1..=layers).contains(&n) => (Role::Mix, n),
            _ => {
                return Err(CliError::Usage(format!(
                    "{spec:?}: layer {l:?} must be 0 (provider) or a mix layer 1 to {layers}"
                )))
            }
        },
    };
    let descriptor = NodeDescriptor::read(Path::new(path)).map_err(|e| e.to_string())?;
    Ok((descriptor, role, layer))
}

fn build(a: &BuildArgs) -> Result<(), CliError> {
    let (out, layers, days) = (&a.out, a.layers, a.valid_days);
    let network = a.network.params(layers);
    network
        .check(layers)
        .map_err(|e| CliError::Usage(format!("{e} (--layers {layers})")))?;
    let now = unix_now_s();
    // Serials only go up: by default the current time, or one more than the
    // document being replaced if that is higher.
    let previous = TopologyFile::read(out).ok().map(|f| f.serial);
    let serial = a
        .serial
        .unwrap_or_else(|| now.max(previous.map_or(0, |p| p + 1)));
    let placed = a
        .nodes
        .iter()
        .map(|p| placement(p, layers))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(previous) = previous.filter(|&p| p >= serial) {
        return Err(CliError::Failed(format!(
            "{}: holds serial {previous}, not below the new {serial}; pass a higher --serial",
            out.display()
        )));
    }
    let operator = keyfile::read_identity(&a.operator_key).map_err(|e| e.to_string())?;
    let params = BuildParams {
        serial,
        // Five minutes back, so that nodes whose clocks run a little behind
        // the operator's accept the document at once.
        valid_from: now.saturating_sub(300),
        valid_until: now + days * 86_400,
        layers,
        network,
    };
    let file = TopologyFile::build(params, &placed, &operator).map_err(|e| e.to_string())?;
    let text = file.to_toml().map_err(|e| e.to_string())?;
    // Write beside the target and rename, so that a node reloading never
    // reads half a document.
    let mut tmp = out.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, out))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "wrote {}: serial {serial}, {} nodes in {layers} layers plus providers, valid for {days} days, signed by operator {}",
        out.display(),
        file.nodes.len(),
        operator.public().fingerprint()
    );
    Ok(())
}

fn span(from_now_s: i128) -> String {
    let s = from_now_s.unsigned_abs();
    let text = if s >= 86_400 {
        format!("{} d {} h", s / 86_400, s % 86_400 / 3600)
    } else if s >= 3600 {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    } else {
        format!("{} min {} s", s / 60, s % 60)
    };
    if from_now_s >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A readable description of `file` and the result of checking it.
/// The `params:` line of `topology show`.
fn describe_params(p: &NetworkParams) -> String {
    format!(
        "params: mean delay {} ms per hop; clients lambda_P {} lambda_L {} lambda_D {} /s, \
         pull every {} ms, k = {}; nodes lambda_M {:.4} /s; {} hops, {}-byte payload, mtu {}{}",
        p.mean_delay_ms,
        p.lambda_p,
        p.lambda_l,
        p.lambda_d,
        p.pull_period_ms,
        p.pull_frames,
        p.lambda_m,
        p.max_hops,
        p.payload_len,
        p.mtu,
        if p.allow_rate_overrides {
            "; clients MAY override their rates (development)"
        } else {
            ""
        }
    )
}

fn describe(file: &TopologyFile, verdict: &Result<Topology, String>, pinned: bool) -> String {
    let now = unix_now_s();
    let mut o = String::new();
    let rel = |t: u64| span(i128::from(t) - i128::from(now));
    let _ = writeln!(o, "version {}, serial {}", file.version, file.serial);
    let _ = writeln!(
        o,
        "valid from {} ({}) until {} ({})",
        file.valid_from,
        rel(file.valid_from),
        file.valid_until,
        rel(file.valid_until)
    );
    let fp = |hex: &str| {
        IdentityPublic::from_hex(hex)
            .map_or_else(|_| format!("{hex:?} (not a key)"), |k| k.fingerprint())
    };
    let _ = writeln!(o, "operator {}", fp(&file.operator_key));
    let _ = writeln!(o, "{}", describe_params(&file.params));
    let current = epoch_at(now, file.epoch_s);
    let mut common: Option<(u64, u64)> = None;
    for n in &file.nodes {
        let (Some(first), Some(last)) = (n.mix_keys.first(), n.mix_keys.last()) else {
            common = Some((1, 0));
            continue;
        };
        common = Some(match common {
            None => (first.epoch, last.epoch),
            Some((a, b)) => (a.max(first.epoch), b.min(last.epoch)),
        });
    }
    let covered = match common {
        Some((a, b)) if a <= b => format!("{a}..={b}"),
        _ => "none".into(),
    };
    let _ = writeln!(
        o,
        "key epochs of {} s: current {current}; every node has keys for {covered}",
        file.epoch_s
    );
    let mut order: Vec<usize> = (0..file.nodes.len()).collect();
    order.sort_by_key(|&i| (file.nodes[i].layer, i));
    let mut last_layer = None;
    for i in order {
        let n = &file.nodes[i];
        if last_layer != Some(n.layer) {
            last_layer = Some(n.layer);
            if n.layer == 0 {
                let _ = writeln!(o, "providers (layer 0):");
            } else {
                let _ = writeln!(o, "layer {} of {}:", n.layer, file.layers);
            }
        }
        let epochs = match (n.mix_keys.first(), n.mix_keys.last()) {
            (Some(a), Some(b)) => format!(
                "epochs {}..={} ({} keys)",
                a.epoch,
                b.epoch,
                n.mix_keys.len()
            ),
            _ => "no mix keys".into(),
        };
        let _ = writeln!(
            o,
            "  [{i}] {:?} identity {} id {} at {}, {epochs}",
            n.role,
            fp(&n.identity_key),
            n.id.get(..8).unwrap_or(&n.id),
            n.address
        );
    }
    let _ = match verdict {
        Ok(_) if pinned => writeln!(o, "signatures: all verify; signed by the given operator key"),
        Ok(_) => writeln!(
            o,
            "signatures: all verify against the document's own operator key (pass --operator-pub to check who signed it)"
        ),
        Err(e) => writeln!(o, "REFUSED: {e}"),
    };
    o
}

fn show(path: &Path, operator_pub: Option<&str>) -> Result<(), CliError> {
    let file = TopologyFile::read(path).map_err(|e| e.to_string())?;
    let pinned = operator_pub.map(operator_public).transpose()?;
    let trusted = match pinned {
        Some(k) => Ok(k),
        None => {
            IdentityPublic::from_hex(&file.operator_key).map_err(|e| format!("operator_key: {e}"))
        }
    };
    let verdict = trusted.and_then(|k| {
        Topology::from_file(&path.display().to_string(), file.clone(), &k, unix_now_s())
            .map_err(|e| e.to_string())
    });
    print!("{}", describe(&file, &verdict, pinned.is_some()));
    Ok(())
}

fn verify(path: &Path, operator_pub: &str) -> Result<(), CliError> {
    let trusted = operator_public(operator_pub)?;
    let t = Topology::load(path, &trusted, unix_now_s()).map_err(|e| e.to_string())?;
    println!(
        "ok: {} serial {}, {} nodes, {} layers, signed by {}, valid {}",
        path.display(),
        t.serial,
        t.nodes.len(),
        t.layers,
        t.operator.fingerprint(),
        span(i128::from(t.valid_until) - i128::from(unix_now_s())).replace("in ", "for ")
    );
    Ok(())
}
