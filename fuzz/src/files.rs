//! The files a node (or a client) reads, as text from the input: the node
//! config, the signed topology document (parsed, then every check against
//! the fixed operator key), client registrations (the client's file, the
//! provider's registry file, address files and ids), key files and node
//! descriptors (parsed, then verified). Each must refuse bad text with an
//! error, never a panic; what parses must also survive its own checks and,
//! where the format has a writer, come back the same from its own output.

use std::path::Path;

use loopix_crypto::identity::IdentityKey;
use loopix_directory::descriptor::{self, NodeDescriptor};
use loopix_directory::topology::{Topology, TopologyFile};
use loopix_directory::{Address, Registration};
use loopix_engine::config::MixConfig;
use loopix_engine::keyfile;
use loopix_engine::provider::registry;

/// The operator whose signature the fuzzed topology documents carry (the
/// seeds are signed with it).
pub const OPERATOR_SEED: [u8; 32] = *b"loopix fuzz operator identity v1";

/// The fuzzed operator's key.
pub fn operator() -> IdentityKey {
    IdentityKey::from_seed(OPERATOR_SEED).unwrap()
}

/// A time inside the seeds' validity.
pub const NOW_S: u64 = 1_800_000_000;

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// `config_file`: a node's TOML config.
pub fn config_file(data: &[u8]) {
    let _ = MixConfig::parse(Path::new("fuzz.toml"), &text(data));
}

/// `topology_file`: a topology document, then every check a node makes.
pub fn topology_file(data: &[u8]) {
    let Ok(file) = TopologyFile::parse("fuzz", &text(data)) else {
        return;
    };
    let _ = file.canonical_bytes();
    if let Ok(t) = Topology::from_file("fuzz", file.clone(), &operator().public(), NOW_S) {
        // What checked must still check after a round trip through its
        // own writer.
        let again = TopologyFile::parse("again", &file.to_toml().unwrap()).unwrap();
        let t2 = Topology::from_file("again", again, &operator().public(), NOW_S).unwrap();
        let _ = t.check_successor(&t2, "again");
    }
}

/// `registration_file`: the first byte picks the format.
pub fn registration_file(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let t = text(rest);
    match which % 4 {
        0 => {
            if let Ok(r) = Registration::parse(&t) {
                let again = Registration::parse(&r.to_toml()).unwrap();
                assert!(again == r, "a registration changed through its own writer");
            }
        }
        1 => {
            let _ = registry::parse_entry(Path::new("3.toml"), &t);
        }
        2 => {
            if let Ok(a) = Address::parse(&t) {
                let again = Address::parse(&a.to_toml()).unwrap();
                assert!(
                    again.to_id() == a.to_id(),
                    "an address changed through its writer"
                );
                assert!(Address::parse_id(&a.to_id()).is_ok());
            }
        }
        _ => {
            let _ = Address::parse_id(&t);
        }
    }
}

/// `key_files`: the first byte picks the format.
pub fn key_files(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let t = text(rest);
    let path = Path::new("fuzz.key");
    match which % 4 {
        0 => {
            let _ = keyfile::parse_hex32(path, &t);
        }
        1 => {
            let _ = IdentityKey::from_hex(&t);
        }
        2 => {
            let _ = descriptor::parse_public("fuzz", &t);
        }
        _ => {
            if let Ok(d) = NodeDescriptor::parse(Path::new("node.toml"), &t) {
                let _ = d.verify("fuzz");
            }
        }
    }
}
