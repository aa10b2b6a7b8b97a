//! A provider's client registry: one small TOML file per registered client,
//! `<data_dir>/clients/<slot>.toml`, holding its slot, a name for the
//! operator, its mailbox and its access key; and the table the shards use to
//! authenticate client frames.
//!
//! Invariants:
//! - a slot is claimed by creating its file with `create_new`, so two
//!   `register` commands running at once never get the same slot;
//! - files are mode 0600 (they hold access keys), the directory 0700;
//! - the admin commands touch only this directory, never the inbox file, so
//!   they work while the provider runs; the provider rescans it;
//! - a file that does not parse is reported and skipped, never a panic; an
//!   empty file is a registration still being written and is skipped
//!   silently.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use loopix_crypto::access::MAX_SLOT;
use loopix_crypto::{LinkKey, MailboxId};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

/// The registry directory under a provider's data directory.
pub fn clients_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("clients")
}

/// One client's file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    slot: u32,
    name: String,
    mailbox: String,
    access_key: String,
}

/// A registered client.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientEntry {
    /// Its slot: the sender index of its frames.
    pub slot: u32,
    /// A name for the operator (not used by the protocol).
    pub name: String,
    /// Its mailbox.
    pub mailbox: MailboxId,
    /// Its access key (secret).
    pub access_key: [u8; 16],
}

impl std::fmt::Debug for ClientEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientEntry")
            .field("slot", &self.slot)
            .field("name", &self.name)
            .field("mailbox", &self.mailbox)
            .finish_non_exhaustive()
    }
}

fn hex16(field: &str, path: &Path, text: &str) -> Result<[u8; 16], String> {
    let v = hex::decode(text.trim())
        .map_err(|e| format!("{}: `{field}` is not hex ({e})", path.display()))?;
    v.try_into()
        .map_err(|_| format!("{}: `{field}` must be 32 hex digits", path.display()))
}

/// Parse one registry file's text; `path` names it in errors and its stem
/// must be the slot.
pub fn parse_entry(path: &Path, text: &str) -> Result<ClientEntry, String> {
    let f: ClientFile =
        toml::from_str(text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    let expected = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u32>().ok());
    if expected != Some(f.slot) {
        return Err(format!(
            "{}: `slot` is {} but the file name says otherwise; rename the file to {}.toml",
            path.display(),
            f.slot,
            f.slot
        ));
    }
    Ok(ClientEntry {
        slot: f.slot,
        name: f.name,
        mailbox: MailboxId(hex16("mailbox", path, &f.mailbox)?),
        access_key: hex16("access_key", path, &f.access_key)?,
    })
}

/// The slot a registry file name stands for (`<slot>.toml`), if any.
fn slot_of(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".toml")?;
    // Canonical decimal only, so that `007.toml` is not slot 7 twice.
    if stem.is_empty() || (stem.len() > 1 && stem.starts_with('0')) {
        return None;
    }
    stem.parse::<u32>().ok().filter(|s| *s <= MAX_SLOT)
}

/// Every registered client, by slot, and a message for each file that could
/// not be read (skipped). A missing directory is an empty registry.
pub fn scan(data_dir: &Path) -> (Vec<ClientEntry>, Vec<String>) {
    let dir = clients_dir(data_dir);
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let read = match fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (entries, problems),
        Err(e) => {
            problems.push(format!("{}: cannot list: {e}", dir.display()));
            return (entries, problems);
        }
    };
    for item in read.flatten() {
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if slot_of(name).is_none() {
            continue;
        }
        let path = item.path();
        match fs::read_to_string(&path) {
            Ok(text) if text.trim().is_empty() => {}
            Ok(text) => match parse_entry(&path, &text) {
                Ok(e) => entries.push(e),
                Err(p) => problems.push(p),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    entries.sort_by_key(|e| e.slot);
    (entries, problems)
}

/// The lowest slot not in `used` (sorted ascending).
fn first_free(used: &[u32]) -> Option<u32> {
    let mut want = 0u32;
    for &u in used {
        if u > want {
            break;
        }
        if u == want {
            want = want.checked_add(1)?;
        }
    }
    (want <= MAX_SLOT).then_some(want)
}

fn used_slots(dir: &Path) -> Result<Vec<u32>, String> {
    let mut used: Vec<u32> = fs::read_dir(dir)
        .map_err(|e| format!("{}: cannot list: {e}", dir.display()))?
        .flatten()
        .filter_map(|d| d.file_name().to_str().and_then(slot_of))
        .collect();
    used.sort_unstable();
    Ok(used)
}

/// Register a new client: claim the lowest free slot, give it a random
/// mailbox and access key, and write its file (mode 0600, synced).
pub fn register(data_dir: &Path, name: &str) -> Result<ClientEntry, String> {
    let dir = clients_dir(data_dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            format!(
                "{}: cannot create the client registry: {e}; check provider.data_dir",
                dir.display()
            )
        })?;
    // Another `register` may claim the slot between the listing and the
    // create: then list again. Bounded: each retry sees one more slot used.
    for _ in 0..64 {
        let used = used_slots(&dir)?;
        let slot = first_free(&used).ok_or("every client slot is taken")?;
        let path = dir.join(format!("{slot}.toml"));
        let mut file = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: cannot create: {e}", path.display())),
        };
        let mut mailbox = [0u8; 16];
        let mut access_key = [0u8; 16];
        OsRng.fill_bytes(&mut mailbox);
        OsRng.fill_bytes(&mut access_key);
        let entry = ClientEntry {
            slot,
            name: name.to_owned(),
            mailbox: MailboxId(mailbox),
            access_key,
        };
        let text = toml::to_string(&ClientFile {
            slot,
            name: entry.name.clone(),
            mailbox: hex::encode(mailbox),
            access_key: hex::encode(access_key),
        })
        .expect("a client file always serializes");
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        return Ok(entry);
    }
    Err(format!(
        "{}: could not claim a slot (other registrations kept taking them); try again",
        dir.display()
    ))
}

/// Remove the client in `slot`; returns what it was.
pub fn unregister(data_dir: &Path, slot: u32) -> Result<ClientEntry, String> {
    let path = clients_dir(data_dir).join(format!("{slot}.toml"));
    let text = fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "no client in slot {slot} ({} does not exist); see `loopix provider clients`",
                path.display()
            )
        } else {
            format!("{}: {e}", path.display())
        }
    })?;
    let entry = parse_entry(&path, &text)?;
    fs::remove_file(&path).map_err(|e| format!("{}: cannot remove: {e}", path.display()))?;
    Ok(entry)
}

/// A registered client as the shards see it.
pub struct ClientLink {
    /// Its mailbox (a pull must name it).
    pub mailbox: MailboxId,
    /// Its access key, ready for frames.
    pub link: LinkKey,
}

/// The registered clients by slot (shared, read-only; replaced whole when
/// the registry changes).
#[derive(Default)]
pub struct ClientTable {
    /// Clients by slot.
    pub by_slot: HashMap<u32, ClientLink>,
}

impl ClientTable {
    /// The table of `entries`.
    pub fn new(entries: &[ClientEntry]) -> ClientTable {
        ClientTable {
            by_slot: entries
                .iter()
                .map(|e| {
                    (
                        e.slot,
                        ClientLink {
                            mailbox: e.mailbox,
                            link: LinkKey::from_bytes(&e.access_key),
                        },
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn free_slots() {
        assert_eq!(first_free(&[]), Some(0));
        assert_eq!(first_free(&[0, 1, 2]), Some(3));
        assert_eq!(first_free(&[0, 2, 3]), Some(1));
        assert_eq!(first_free(&[1, 2]), Some(0));
        assert_eq!(slot_of("12.toml"), Some(12));
        assert_eq!(slot_of("012.toml"), None);
        assert_eq!(slot_of("x.toml"), None);
        assert_eq!(slot_of("4294967295.toml"), None, "the provider's own index");
    }

    #[test]
    fn register_scan_unregister() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = register(dir.path(), "alice").expect("register");
        let b = register(dir.path(), "bob").expect("register");
        assert_eq!((a.slot, b.slot), (0, 1));
        assert_ne!(a.mailbox, b.mailbox);
        let mode = fs::metadata(clients_dir(dir.path()).join("0.toml"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let (all, problems) = scan(dir.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(all, vec![a.clone(), b.clone()]);
        assert_eq!(unregister(dir.path(), 0).expect("present"), a);
        assert!(unregister(dir.path(), 0)
            .expect_err("gone")
            .contains("slot 0"));
        // The freed slot is reused.
        assert_eq!(register(dir.path(), "carol").expect("register").slot, 0);
        // A damaged file is reported and skipped; an empty one is skipped.
        fs::write(clients_dir(dir.path()).join("7.toml"), "slot = 7\n").expect("write");
        fs::write(clients_dir(dir.path()).join("8.toml"), "").expect("write");
        let (all, problems) = scan(dir.path());
        assert_eq!(all.len(), 2);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("7.toml"), "{problems:?}");
    }

    #[test]
    fn concurrent_registrations_get_distinct_slots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_owned();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let p = path.clone();
                std::thread::spawn(move || register(&p, &format!("c{i}")).expect("register"))
            })
            .collect();
        let mut slots: Vec<u32> = handles
            .into_iter()
            .map(|h| h.join().expect("thread").slot)
            .collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..8).collect::<Vec<_>>());
    }
}
