//! Key files on disk: what `loopix keygen` writes and a node reads at start.
//!
//! Layout of a key directory:
//! - `link.key`: the node's static X25519 link key (hex, mode 0600);
//! - `mix-<epoch>.key`: the Sphinx key of each key epoch (hex, mode 0600);
//! - `node.toml`: the public descriptor (node id, link public key, mix public
//!   keys by epoch) that goes into the topology.
//!
//! Invariants: secret files are created with mode 0600 and never
//! overwritten; a node refuses to start if a secret file is readable by
//! group or others; every error names the file and what to do.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use loopix_crypto::{NodeId, PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

/// A key-file problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// I/O on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The content is not what `loopix keygen` writes.
    #[error("{path}: {problem}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Group or others can read a secret.
    #[error("{path}: mode {mode:o} lets others read a secret key; run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// No key for an epoch the node needs.
    #[error("{dir}: no key for epoch {epoch} (mix-{epoch}.key); run `loopix keygen --dir {dir} --epochs N` to add epochs")]
    MissingEpoch {
        /// The key directory.
        dir: PathBuf,
        /// The epoch.
        epoch: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The node id convention: the first 16 bytes of a BLAKE3 derive-key over
/// the link public key.
pub fn node_id_of(link_public: &PublicKey) -> NodeId {
    let h = blake3::derive_key("loopix node id 2026-11 v1", link_public.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[..16]);
    NodeId(id)
}

/// The key epoch containing `unix_s`.
pub fn epoch_at(unix_s: u64, epoch_s: u64) -> u64 {
    unix_s / epoch_s.max(1)
}

/// Seconds since the Unix epoch (the wall clock decides key epochs).
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The public descriptor a node publishes (`node.toml`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeDescriptor {
    /// Node id (hex, 16 bytes).
    pub id: String,
    /// Static X25519 link public key (hex).
    pub link_key: String,
    /// Key epoch length in seconds.
    pub epoch_s: u64,
    /// Sphinx public key per epoch (epoch number as a string, hex key).
    pub mix_keys: BTreeMap<String, String>,
}

fn parse_hex32(path: &Path, text: &str) -> Result<[u8; 32], KeyError> {
    let bad = |problem: String| KeyError::Format {
        path: path.to_owned(),
        problem,
    };
    let v = hex::decode(text.trim()).map_err(|e| bad(format!("not hex: {e}")))?;
    v.try_into()
        .map_err(|v: Vec<u8>| bad(format!("{} bytes, expected 32", v.len())))
}

/// Parse a 32-byte hex public key from a named place.
pub fn parse_public(what: &str, text: &str) -> Result<PublicKey, String> {
    let v = hex::decode(text.trim()).map_err(|e| format!("{what}: not hex: {e}"))?;
    let b: [u8; 32] = v
        .try_into()
        .map_err(|v: Vec<u8>| format!("{what}: {} bytes, expected 32", v.len()))?;
    Ok(PublicKey::from_bytes(b))
}

/// Read a secret key file, refusing group- or world-readable files.
pub fn read_secret(path: &Path) -> Result<SecretKey, KeyError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    Ok(SecretKey::from_bytes(parse_hex32(path, &text)?))
}

fn write_secret(path: &Path, key: &SecretKey) -> Result<(), KeyError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_err(path))
}

fn mix_key_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("mix-{epoch}.key"))
}

/// What `keygen` did.
#[derive(Debug)]
pub struct KeygenReport {
    /// The descriptor now in `node.toml`.
    pub descriptor: NodeDescriptor,
    /// Files created (existing keys are never overwritten).
    pub created: Vec<PathBuf>,
}

/// Create `dir` if needed, the link key if missing, and a mix key for each
/// epoch `first_epoch .. first_epoch + epochs` that is missing; then rewrite
/// `node.toml` from every mix key present.
pub fn keygen(
    dir: &Path,
    epoch_s: u64,
    first_epoch: u64,
    epochs: u64,
) -> Result<KeygenReport, KeyError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut created = Vec::new();
    let link_path = dir.join("link.key");
    if !link_path.exists() {
        write_secret(&link_path, &SecretKey::generate(&mut OsRng))?;
        created.push(link_path.clone());
    }
    for e in first_epoch..first_epoch + epochs {
        let p = mix_key_path(dir, e);
        if !p.exists() {
            let mut seed = [0u8; 32];
            OsRng.fill_bytes(&mut seed);
            write_secret(&p, &SecretKey::from_bytes(seed))?;
            created.push(p);
        }
    }
    let link = read_secret(&link_path)?;
    let mut mix_keys = BTreeMap::new();
    for (epoch, key) in read_mix_keys(dir)? {
        mix_keys.insert(epoch.to_string(), hex::encode(key.public_key().as_bytes()));
    }
    let descriptor = NodeDescriptor {
        id: hex::encode(node_id_of(&link.public_key()).0),
        link_key: hex::encode(link.public_key().as_bytes()),
        epoch_s,
        mix_keys,
    };
    let desc_path = dir.join("node.toml");
    let text = toml::to_string(&descriptor).map_err(|e| KeyError::Format {
        path: desc_path.clone(),
        problem: e.to_string(),
    })?;
    fs::write(&desc_path, text).map_err(io_err(&desc_path))?;
    Ok(KeygenReport {
        descriptor,
        created,
    })
}

/// Every `mix-<epoch>.key` in `dir`, by epoch.
pub fn read_mix_keys(dir: &Path) -> Result<BTreeMap<u64, SecretKey>, KeyError> {
    let mut keys = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(epoch) = name
            .strip_prefix("mix-")
            .and_then(|r| r.strip_suffix(".key"))
            .and_then(|e| e.parse::<u64>().ok())
        else {
            continue;
        };
        keys.insert(epoch, read_secret(&entry.path())?);
    }
    Ok(keys)
}

/// The node's secrets as loaded at start.
pub struct NodeSecrets {
    /// Static link key.
    pub link: SecretKey,
    /// Sphinx keys by epoch.
    pub mix: BTreeMap<u64, SecretKey>,
}

/// Load `link.key` and every mix key from `dir`; `need_epoch` must be present.
pub fn load_node_secrets(dir: &Path, need_epoch: u64) -> Result<NodeSecrets, KeyError> {
    let link = read_secret(&dir.join("link.key"))?;
    let mix = read_mix_keys(dir)?;
    if !mix.contains_key(&need_epoch) {
        return Err(KeyError::MissingEpoch {
            dir: dir.to_owned(),
            epoch: need_epoch,
        });
    }
    Ok(NodeSecrets { link, mix })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_private_files_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = keygen(dir.path(), 3600, 100, 3).expect("keygen");
        assert_eq!(r.created.len(), 4);
        assert_eq!(r.descriptor.mix_keys.len(), 3);
        for p in &r.created {
            let mode = fs::metadata(p).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let link_before = fs::read(dir.path().join("link.key")).expect("read");
        let r2 = keygen(dir.path(), 3600, 101, 3).expect("keygen again");
        assert_eq!(r2.created.len(), 1, "only epoch 103 is new");
        assert_eq!(
            fs::read(dir.path().join("link.key")).expect("read"),
            link_before
        );
        assert_eq!(r2.descriptor.id, r.descriptor.id);
        let s = load_node_secrets(dir.path(), 102).expect("load");
        assert_eq!(s.mix.len(), 4);
        assert!(matches!(
            load_node_secrets(dir.path(), 99),
            Err(KeyError::MissingEpoch { epoch: 99, .. })
        ));
    }

    #[test]
    fn readable_secret_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        keygen(dir.path(), 3600, 1, 1).expect("keygen");
        let p = dir.path().join("link.key");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_secret(&p).expect_err("refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("link.key");
        fs::write(&p, "zz\n").expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = read_secret(&p).expect_err("refused").to_string();
        assert!(err.contains("not hex"), "{err}");
    }
}
