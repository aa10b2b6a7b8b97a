//! The fixed keys, ids and addresses of the fuzzed node, its neighbours and
//! its clients. Seeds are built from these, so changing any of them makes
//! the valid seeds invalid: regenerate the corpus then (see `seeds`).
//!
//! The fuzzed node is a provider at topology index 0. Its neighbours:
//! index 1 sends to it and receives from it, index 2 only sends to it,
//! index 3 only receives from it; index 4 is nobody. Client slots 0 and 1
//! are registered, slot 2 is not.

use std::net::SocketAddr;

use loopix_crypto::{LinkKey, MailboxId, NodeId, SecretKey};
use loopix_engine::provider::registry::{ClientEntry, ClientLink, ClientTable};
use loopix_engine::shard::{Links, Peer};

/// The node's Sphinx secret for [`EPOCH`].
pub const NODE_SECRET: [u8; 32] = *b"loopix fuzz provider key, v1 ...";
/// The key epoch the node accepts.
pub const EPOCH: u64 = 7;
/// The node's address.
pub const NODE_PORT: u16 = 7000;
/// Neighbours' topology indices (1..=3 are neighbours, 4 is nobody).
pub const SENDER_INDICES: u32 = 5;
/// Client slots tried (0 and 1 registered).
pub const CLIENT_SLOTS: u32 = 3;
/// Where clients send from.
pub const CLIENT_PORT: u16 = 7100;
/// Frames in a pull answer.
pub const PULL_FRAMES: u16 = 4;

/// The node's Sphinx secret.
pub fn node_secret() -> SecretKey {
    SecretKey::from_bytes(NODE_SECRET)
}

/// A loopback address at `port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The node's address.
pub fn node_addr() -> SocketAddr {
    addr(NODE_PORT)
}

/// The address of the neighbour at `index`.
pub fn peer_addr(index: u32) -> SocketAddr {
    addr(NODE_PORT + 1 + index as u16)
}

/// The id of the neighbour at `index`.
pub fn peer_id(index: u32) -> NodeId {
    NodeId([0x40 + index as u8; 16])
}

/// The pairwise link key with the neighbour at `index` (any index: a
/// frame from "nobody" is sealed with a key the node does not hold).
pub fn peer_key(index: u32) -> LinkKey {
    LinkKey::from_bytes(&[0x10 + index as u8; 16])
}

/// The neighbours table; `without` leaves one neighbour out (a reload that
/// removes it).
pub fn links(without: Option<u32>) -> Links {
    let mut peers = vec![None];
    let mut next_hop = std::collections::HashMap::new();
    for i in 1..SENDER_INDICES - 1 {
        if Some(i) == without {
            peers.push(None);
            continue;
        }
        let (inbound, outbound) = match i {
            1 => (true, true),
            2 => (true, false),
            _ => (false, true),
        };
        if outbound {
            next_hop.insert(peer_id(i), i);
        }
        peers.push(Some(Peer {
            id: peer_id(i),
            address: peer_addr(i),
            link: peer_key(i),
            inbound,
            outbound,
        }));
    }
    Links {
        own_index: 0,
        peers,
        next_hop,
    }
}

/// The rates digest the fuzzed provider expects in pulls.
pub const RATES: [u8; 8] = *b"fz-rates";

/// The access key of the client at `slot`.
pub fn access_key(slot: u32) -> [u8; 16] {
    [0x20 + slot as u8; 16]
}

/// The mailbox of client `slot`.
pub fn mailbox(slot: u32) -> MailboxId {
    MailboxId([0x30 + slot as u8; 16])
}

/// The registered clients (slots 0 and 1).
pub fn client_entries() -> Vec<ClientEntry> {
    (0..CLIENT_SLOTS - 1)
        .map(|slot| ClientEntry {
            slot,
            name: format!("fuzz-{slot}"),
            mailbox: mailbox(slot),
            access_key: access_key(slot),
        })
        .collect()
}

/// The registered clients' table.
pub fn client_table() -> ClientTable {
    ClientTable::new(&client_entries())
}

/// Client `slot`'s access link as the provider holds it.
pub fn client_link(slot: u32) -> ClientLink {
    ClientLink {
        mailbox: mailbox(slot),
        link: LinkKey::from_bytes(&access_key(slot)),
    }
}
