//! Key files on disk: what `loopix keygen` writes and a node reads at start.
//!
//! Layout of a key directory:
//! - `identity.key`: the node's Ed25519 identity seed (hex, mode 0600), which
//!   signs its mix keys and its descriptor;
//! - `link.key`: the node's static X25519 link key (hex, mode 0600);
//! - `mix-<epoch>.key`: the Sphinx key of each key epoch (hex, mode 0600);
//! - `node.toml`: the public descriptor (node id, identity key, link key,
//!   address, mix public keys by epoch each signed by the identity key, and
//!   the identity key's signature over all of it) that goes into the topology.
//!
//! The node id stays the hash of the link public key ([`node_id_of`]), not of
//! the identity key: ids appear in Sphinx routing commands and other code
//! derives them from link keys, and the descriptor signature binds id, link
//! key and identity key together, so the identity key vouches for the id
//! either way.
//!
//! An operator key (`loopix operator-keygen`) is an identity key of its own,
//! in one file, that signs topology documents.
//!
//! Invariants: secret files are created with mode 0600 and never
//! overwritten; a node refuses to start if a secret file is readable by
//! group or others; every error names the file and what to do.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use loopix_crypto::{IdentityKey, IdentityPublic, PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};

use loopix_directory::descriptor::{sign_descriptor, FileError, NodeDescriptor};

/// A key-file problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file that cannot be read, or whose content is not what `loopix
    /// keygen` writes.
    #[error(transparent)]
    File(#[from] FileError),
    /// Group or others can read a secret.
    #[error("{path}: mode {mode:o} lets others read a secret key; run `chmod 600 {path}`")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// No link key: the directory was never set up by `loopix keygen` (or
    /// `node.key_dir` names the wrong one).
    #[error("{dir}: no link.key; this is not a node key directory yet: run `loopix keygen --dir {dir} --address HOST:PORT` to create the node's keys (or point node.key_dir at the directory it made)")]
    MissingLinkKey {
        /// The key directory.
        dir: PathBuf,
    },
    /// A key directory from before identity keys.
    #[error("{dir}: no identity.key (this key directory predates signed topologies); run `loopix keygen --dir {dir}` again to add one, then rebuild the topology")]
    MissingIdentity {
        /// The key directory.
        dir: PathBuf,
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
    move |source| KeyError::File(FileError::io(path, source))
}

/// Seconds since the Unix epoch (the wall clock decides key epochs).
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parse a 32-byte key written as hex (a key file's text); `path` names it
/// in errors.
pub fn parse_hex32(path: &Path, text: &str) -> Result<[u8; 32], KeyError> {
    let bad = |problem: String| KeyError::File(FileError::format(path, problem));
    let v = hex::decode(text.trim()).map_err(|e| bad(format!("not hex: {e}")))?;
    v.try_into()
        .map_err(|v: Vec<u8>| bad(format!("{} bytes, expected 32", v.len())))
}

fn read_secret_text(path: &Path) -> Result<String, KeyError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read_to_string(path).map_err(io_err(path))
}

/// Read a secret key file, refusing group- or world-readable files.
pub fn read_secret(path: &Path) -> Result<SecretKey, KeyError> {
    let text = read_secret_text(path)?;
    Ok(SecretKey::from_bytes(parse_hex32(path, &text)?))
}

/// Read an Ed25519 identity (or operator) key file, refusing group- or
/// world-readable files.
pub fn read_identity(path: &Path) -> Result<IdentityKey, KeyError> {
    let text = read_secret_text(path)?;
    IdentityKey::from_hex(&text).map_err(|e| {
        KeyError::File(FileError::format(
            path,
            format!("not an Ed25519 key written by loopix: {e}"),
        ))
    })
}

fn write_secret_text(path: &Path, text: &str) -> Result<(), KeyError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(format!("{text}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_err(path))
}

fn write_secret(path: &Path, key: &SecretKey) -> Result<(), KeyError> {
    write_secret_text(path, &hex::encode(key.to_bytes()))
}

/// Write a new operator key to `path` (mode 0600, never overwriting one)
/// and its public key to `<path>.pub`; returns the public key.
pub fn operator_keygen(path: &Path) -> Result<IdentityPublic, KeyError> {
    if path.exists() {
        return Err(KeyError::File(FileError::format(
            path,
            "already exists; an operator key is never overwritten (remove it first if you really mean to replace it)",
        )));
    }
    let key = IdentityKey::generate(&mut OsRng);
    write_secret_text(path, &key.to_hex())?;
    let public = key.public();
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    fs::write(&pub_path, format!("{public}\n")).map_err(io_err(&pub_path))?;
    Ok(public)
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

/// [`keygen_at`] keeping the address already in `node.toml`, if any.
pub fn keygen(
    dir: &Path,
    epoch_s: u64,
    first_epoch: u64,
    epochs: u64,
) -> Result<KeygenReport, KeyError> {
    keygen_at(dir, None, epoch_s, first_epoch, epochs)
}

/// The address in an existing `node.toml`, read leniently so that
/// descriptors of older formats still give theirs up.
fn previous_address(desc_path: &Path) -> Option<SocketAddr> {
    let text = fs::read_to_string(desc_path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table.get("address")?.as_str()?.parse().ok()
}

/// Create `dir` if needed, the identity and link keys if missing, and a mix
/// key for each epoch `first_epoch .. first_epoch + epochs` that is missing;
/// then rewrite `node.toml` from every mix key present, each signed by the
/// identity key. `address` replaces the one in `node.toml`; without either,
/// the descriptor has no address and no signature (a topology refuses it).
pub fn keygen_at(
    dir: &Path,
    address: Option<SocketAddr>,
    epoch_s: u64,
    first_epoch: u64,
    epochs: u64,
) -> Result<KeygenReport, KeyError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut created = Vec::new();
    let identity_path = dir.join("identity.key");
    if !identity_path.exists() {
        write_secret_text(&identity_path, &IdentityKey::generate(&mut OsRng).to_hex())?;
        created.push(identity_path.clone());
    }
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
    let identity = read_identity(&identity_path)?;
    let link = read_secret(&link_path)?;
    let mix: BTreeMap<u64, PublicKey> = read_mix_keys(dir)?
        .iter()
        .map(|(e, k)| (*e, k.public_key()))
        .collect();
    let desc_path = dir.join("node.toml");
    let address = address.or_else(|| previous_address(&desc_path));
    let descriptor = sign_descriptor(&identity, &link.public_key(), &mix, address, epoch_s);
    let text = toml::to_string(&descriptor)
        .map_err(|e| KeyError::File(FileError::format(&desc_path, e.to_string())))?;
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

/// Delete the mix keys of epochs below `oldest_kept` from `dir` (their
/// grace period is over: kept on disk, a later seizure would decrypt
/// recorded traffic of their epochs). Returns the epochs deleted and the
/// epochs whose keys remain, both in order.
pub fn remove_mix_keys_before(
    dir: &Path,
    oldest_kept: u64,
) -> Result<(Vec<u64>, Vec<u64>), KeyError> {
    let (gone, kept): (Vec<u64>, Vec<u64>) = read_mix_keys(dir)?
        .into_keys()
        .partition(|&epoch| epoch < oldest_kept);
    for &epoch in &gone {
        let p = mix_key_path(dir, epoch);
        fs::remove_file(&p).map_err(io_err(&p))?;
    }
    Ok((gone, kept))
}

/// The node's secrets as loaded at start.
pub struct NodeSecrets {
    /// Ed25519 identity key.
    pub identity: IdentityKey,
    /// Static link key.
    pub link: SecretKey,
    /// Sphinx keys by epoch.
    pub mix: BTreeMap<u64, SecretKey>,
}

/// Load `link.key`, `identity.key` and every mix key from `dir`;
/// `need_epoch` must be present.
pub fn load_node_secrets(dir: &Path, need_epoch: u64) -> Result<NodeSecrets, KeyError> {
    let link_path = dir.join("link.key");
    if !link_path.exists() {
        return Err(KeyError::MissingLinkKey {
            dir: dir.to_owned(),
        });
    }
    let link = read_secret(&link_path)?;
    let identity_path = dir.join("identity.key");
    if !identity_path.exists() {
        return Err(KeyError::MissingIdentity {
            dir: dir.to_owned(),
        });
    }
    let identity = read_identity(&identity_path)?;
    let mix = read_mix_keys(dir)?;
    if !mix.contains_key(&need_epoch) {
        return Err(KeyError::MissingEpoch {
            dir: dir.to_owned(),
            epoch: need_epoch,
        });
    }
    Ok(NodeSecrets {
        identity,
        link,
        mix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_private_files_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = keygen(dir.path(), 3600, 100, 3).expect("keygen");
        assert_eq!(r.created.len(), 5, "identity, link and three mix keys");
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
        assert_eq!(r2.descriptor.identity_key, r.descriptor.identity_key);
        let s = load_node_secrets(dir.path(), 102).expect("load");
        assert_eq!(s.mix.len(), 4);
        assert!(matches!(
            load_node_secrets(dir.path(), 99),
            Err(KeyError::MissingEpoch { epoch: 99, .. })
        ));
    }

    #[test]
    fn descriptor_signatures_verify_and_catch_tampering() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = keygen(dir.path(), 3600, 7, 2).expect("keygen");
        let err = r.descriptor.verify("d").expect_err("no address yet");
        assert!(err.contains("no address"), "{err}");
        let addr: SocketAddr = "127.0.0.1:1789".parse().expect("addr");
        let r = keygen_at(dir.path(), Some(addr), 3600, 7, 2).expect("keygen");
        let claims = r.descriptor.verify("d").expect("verifies");
        assert_eq!(claims.address, addr);
        assert_eq!(claims.mix_keys.len(), 2);
        // A later run without --address keeps the address.
        let again = keygen(dir.path(), 3600, 8, 2).expect("keygen");
        assert_eq!(again.descriptor.address, Some(addr));
        assert_eq!(
            NodeDescriptor::read(dir.path()).expect("read"),
            again.descriptor
        );
        again.descriptor.verify("d").expect("verifies");

        let mut moved = again.descriptor.clone();
        moved.address = Some("127.0.0.1:1790".parse().expect("addr"));
        let err = moved.verify("d").expect_err("moved");
        assert!(err.contains("node signature"), "{err}");
        let mut flipped = again.descriptor.clone();
        let s = &mut flipped.mix_keys[1].signature;
        *s = format!("{}{}", if s.starts_with('0') { '1' } else { '0' }, &s[1..]);
        let err = flipped.verify("d").expect_err("flipped");
        assert!(err.contains("mix key for epoch 8"), "{err}");
    }

    #[test]
    fn missing_link_key_points_at_keygen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = load_node_secrets(dir.path(), 1).err().expect("no keys");
        let text = e.to_string();
        assert!(text.contains("no link.key"), "{text}");
        assert!(text.contains("loopix keygen --dir"), "{text}");
    }

    #[test]
    fn retired_mix_keys_are_removed_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        keygen(dir.path(), 3600, 5, 4).expect("keygen");
        assert_eq!(
            remove_mix_keys_before(dir.path(), 7).expect("removed"),
            (vec![5, 6], vec![7, 8])
        );
        let left: Vec<u64> = read_mix_keys(dir.path())
            .expect("read")
            .into_keys()
            .collect();
        assert_eq!(left, vec![7, 8]);
        assert!(dir.path().join("link.key").exists());
        assert!(remove_mix_keys_before(dir.path(), 7)
            .expect("again")
            .0
            .is_empty());
    }

    #[test]
    fn old_key_dir_without_identity_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        keygen(dir.path(), 3600, 1, 1).expect("keygen");
        fs::remove_file(dir.path().join("identity.key")).expect("rm");
        let err = load_node_secrets(dir.path(), 1)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("identity.key") && err.contains("loopix keygen"),
            "{err}"
        );
    }

    #[test]
    fn operator_key_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("operator.key");
        let public = operator_keygen(&p).expect("operator keygen");
        let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_identity(&p).expect("read").public(), public);
        let pub_text = fs::read_to_string(dir.path().join("operator.key.pub")).expect("pub");
        assert_eq!(pub_text.trim(), public.to_hex());
        let err = operator_keygen(&p).expect_err("exists").to_string();
        assert!(err.contains("never overwritten"), "{err}");
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
