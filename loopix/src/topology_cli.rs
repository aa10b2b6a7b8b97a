//! `loopix operator-keygen` and `loopix topology build | show | verify`: the
//! operator's side of signed topology documents (`docs/topology.md`).
//!
//! Every command returns `Err(message)` phrased for the operator (exit 1) or
//! a usage mistake (exit 2); nothing here panics on a file's content.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use loopix_crypto::IdentityPublic;
use loopix_directory::descriptor::{epoch_at, NodeDescriptor};
use loopix_directory::topology::{BuildParams, Role, Topology, TopologyFile};
use loopix_engine::keyfile::{self, unix_now_s};

/// Usage lines for the top-level usage text.
pub const USAGE: &str = "  loopix operator-keygen --out FILE
      write a new operator key to FILE (mode 0600, never overwritten) and its
      public key to FILE.pub; prints the public key for node.operator_key
  loopix topology build --operator-key FILE --layers L --out FILE
                        [--serial N] [--valid-days D] LAYER:DESCRIPTOR...
      sign a topology document; each DESCRIPTOR is a key directory or its
      node.toml (from `loopix keygen --address`), LAYER is 0 (or
      `provider`) for a provider, 1..L for a mix; serial defaults to the
      current unix time (or one above FILE's), validity to 7 days from
      5 minutes ago
  loopix topology show FILE [--operator-pub KEY]
      print layers, nodes, epochs, validity and whether the signatures verify
  loopix topology verify FILE --operator-pub KEY
      exit 0 if FILE verifies against KEY (hex, or a .pub file) now, else 1";

/// What went wrong: a usage mistake (exit 2) or a failure (exit 1).
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

/// Options (`--name value`) and positional arguments.
struct Args {
    opts: HashMap<String, String>,
    positional: Vec<String>,
}

fn parse_args(args: &[String], known: &[&str]) -> Result<Args, CliError> {
    let mut opts = HashMap::new();
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            if !known.contains(&name) {
                return Err(CliError::Usage(format!("unknown option --{name}")));
            }
            let Some(v) = it.next() else {
                return Err(CliError::Usage(format!("--{name} needs a value")));
            };
            opts.insert(name.to_string(), v.clone());
        } else {
            positional.push(a.clone());
        }
    }
    Ok(Args { opts, positional })
}

impl Args {
    fn required(&self, name: &str, cmd: &str) -> Result<&str, CliError> {
        self.opts
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| CliError::Usage(format!("{cmd} needs --{name}")))
    }

    fn number(&self, name: &str, default: u64) -> Result<u64, CliError> {
        match self.opts.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                CliError::Usage(format!("--{name} must be a whole number, not {v:?}"))
            }),
        }
    }
}

/// `loopix operator-keygen --out FILE`.
pub fn operator_keygen(args: &[String]) -> Result<(), CliError> {
    let a = parse_args(args, &["out"])?;
    if let Some(p) = a.positional.first() {
        return Err(CliError::Usage(format!("unexpected argument {p:?}")));
    }
    let out = PathBuf::from(a.required("out", "operator-keygen")?);
    let public = keyfile::operator_keygen(&out).map_err(|e| e.to_string())?;
    eprintln!(
        "created {} (secret, mode 0600) and {}.pub",
        out.display(),
        out.display()
    );
    println!("{public}");
    Ok(())
}

/// `loopix topology SUBCOMMAND ...`.
pub fn topology(args: &[String]) -> Result<(), CliError> {
    let Some(sub) = args.first() else {
        return Err(CliError::Usage(
            "topology needs build, show or verify".into(),
        ));
    };
    match sub.as_str() {
        "build" => build(&args[1..]),
        "show" => show(&args[1..]),
        "verify" => verify(&args[1..]),
        other => Err(CliError::Usage(format!(
            "unknown topology command {other:?}; use build, show or verify"
        ))),
    }
}

/// Exit status for a command's result, printing its message.
pub fn exit(result: Result<(), CliError>, usage: &str) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            eprintln!("loopix: {msg}\n{usage}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(msg)) => {
            eprintln!("loopix: {msg}");
            ExitCode::FAILURE
        }
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

fn build(args: &[String]) -> Result<(), CliError> {
    let a = parse_args(
        args,
        &["operator-key", "layers", "out", "serial", "valid-days"],
    )?;
    let operator_path = PathBuf::from(a.required("operator-key", "topology build")?);
    let out = PathBuf::from(a.required("out", "topology build")?);
    let layers = match a.required("layers", "topology build")?.parse::<u8>() {
        Ok(l) if l >= 1 => l,
        _ => return Err(CliError::Usage("--layers must be 1 to 255".into())),
    };
    let now = unix_now_s();
    // Serials only go up: by default the current time, or one more than the
    // document being replaced if that is higher.
    let previous = TopologyFile::read(&out).ok().map(|f| f.serial);
    let serial = a.number("serial", now.max(previous.map_or(0, |p| p + 1)))?;
    let days = a.number("valid-days", 7)?;
    if days == 0 || days > 3650 {
        return Err(CliError::Usage("--valid-days must be 1 to 3650".into()));
    }
    if a.positional.is_empty() {
        return Err(CliError::Usage(
            "topology build needs at least one LAYER:DESCRIPTOR".into(),
        ));
    }
    let placed = a
        .positional
        .iter()
        .map(|p| placement(p, layers))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(previous) = previous.filter(|&p| p >= serial) {
        return Err(CliError::Failed(format!(
            "{}: holds serial {previous}, not below the new {serial}; pass a higher --serial",
            out.display()
        )));
    }
    let operator = keyfile::read_identity(&operator_path).map_err(|e| e.to_string())?;
    let params = BuildParams {
        serial,
        // Five minutes back, so that nodes whose clocks run a little behind
        // the operator's accept the document at once.
        valid_from: now.saturating_sub(300),
        valid_until: now + days * 86_400,
        layers,
    };
    let file = TopologyFile::build(params, &placed, &operator).map_err(|e| e.to_string())?;
    let text = file.to_toml().map_err(|e| e.to_string())?;
    // Write beside the target and rename, so that a node reloading never
    // reads half a document.
    let mut tmp = out.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &out))
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

fn one_file(a: &Args, cmd: &str) -> Result<PathBuf, CliError> {
    match a.positional.as_slice() {
        [f] => Ok(PathBuf::from(f)),
        [] => Err(CliError::Usage(format!("topology {cmd} needs FILE"))),
        more => Err(CliError::Usage(format!(
            "topology {cmd} takes one FILE, not {}",
            more.len()
        ))),
    }
}

fn show(args: &[String]) -> Result<(), CliError> {
    let a = parse_args(args, &["operator-pub"])?;
    let path = one_file(&a, "show")?;
    let file = TopologyFile::read(&path).map_err(|e| e.to_string())?;
    let pinned = a
        .opts
        .get("operator-pub")
        .map(|v| operator_public(v))
        .transpose()?;
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

fn verify(args: &[String]) -> Result<(), CliError> {
    let a = parse_args(args, &["operator-pub"])?;
    let path = one_file(&a, "verify")?;
    let trusted = operator_public(a.required("operator-pub", "topology verify")?)?;
    let t = Topology::load(&path, &trusted, unix_now_s()).map_err(|e| e.to_string())?;
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
