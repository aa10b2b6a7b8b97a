//! Sphinx packet construction (sender) and processing (each hop).
//!
//! Packet layout for a geometry with `r` hops and `p` payload bytes:
//! `alpha` (32, X25519 u-coordinate, little-endian) | `gamma` (16, MAC of
//! beta) | `beta` (`r * 40`, routing information) | payload (`p`).
//!
//! A hop: checks that `alpha` is canonical, computes the shared secret
//! (first scalar mult), derives its keys, lets the caller look up the replay
//! tag ([`Unwrapped::replay_tag`]), verifies `gamma`, decrypts `beta` and
//! shifts it one slot left (padding the end with keystream), removes its
//! payload layer, and, only for forwarding commands, blinds `alpha` for the
//! next hop (second scalar mult).
//!
//! Invariants: the packet length never changes; nothing in the packet is
//! modified before the MAC verifies; a packet whose MAC verifies at one hop
//! verifies at the next only if no header bit changed on the way.

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::scalar::Scalar;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use aes::Aes128;
use ctr::cipher::{KeyIvInit, StreamCipher};

use crate::error::SphinxError;
use crate::geometry::{Geometry, ALPHA_LEN, COMMAND_LEN, MAC_LEN, MAX_HOPS_LIMIT, SLOT_LEN};
use crate::kdf::HopKeys;
use crate::keys::{clamp, is_canonical, RouteKey, SecretKey};
use crate::lioness::Lioness;
use crate::payload;
use crate::routing::RoutingCommand;
use crate::x25519;

type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// Offset of `gamma` in a packet.
pub const GAMMA_OFFSET: usize = ALPHA_LEN;
/// Offset of `beta` in a packet.
pub const BETA_OFFSET: usize = ALPHA_LEN + MAC_LEN;

/// Largest routing-information stream a hop generates (beta plus one slot).
const STREAM_MAX: usize = (MAX_HOPS_LIMIT + 1) * SLOT_LEN;

/// A per-hop replay tag: equal for two copies of one packet at one hop,
/// unrelated for anything else. Uniformly distributed, so a bloom filter can
/// take its bits directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayTag(pub [u8; 16]);

/// One hop of a path to build: its prepared key and the command it will read.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The hop's X25519 key, prepared for the sender.
    pub key: &'a RouteKey,
    /// What the hop learns.
    pub command: RoutingCommand,
}

/// The payload-layer seeds of each hop of a built header, kept by the sender
/// to encrypt the payload (or, for a SURB, to decrypt the reply).
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct PayloadSeeds(pub(crate) Vec<[u8; 32]>);

/// Check the order of a path's commands: every hop but the last forwards;
/// the last is `Drop` or `Recipient`; `Deliver` is only second to last and is
/// followed by a `Recipient`.
fn validate_path(geometry: &Geometry, hops: &[Hop<'_>]) -> Result<(), SphinxError> {
    let n = hops.len();
    if n == 0 || n > geometry.max_hops() {
        return Err(SphinxError::PathLength {
            hops: n,
            max: geometry.max_hops(),
        });
    }
    for (i, hop) in hops.iter().enumerate() {
        let last = i + 1 == n;
        match hop.command {
            RoutingCommand::Relay { .. } if last => {
                return Err(SphinxError::InvalidPath("the last hop cannot relay"))
            }
            RoutingCommand::Deliver { .. } => {
                if i + 2 != n {
                    return Err(SphinxError::InvalidPath(
                        "Deliver must be the second to last hop",
                    ));
                }
                if !matches!(hops[n - 1].command, RoutingCommand::Recipient { .. }) {
                    return Err(SphinxError::InvalidPath(
                        "Deliver must be followed by a Recipient hop",
                    ));
                }
            }
            RoutingCommand::Drop | RoutingCommand::Recipient { .. } if !last => {
                return Err(SphinxError::InvalidPath(
                    "Drop and Recipient can only be the last hop",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The routing-information keystream of one hop: `beta_len + SLOT_LEN` bytes.
fn header_stream(keys: &HopKeys, out: &mut [u8]) {
    out.fill(0);
    Aes128Ctr::new((&keys.header_key).into(), (&keys.header_iv).into()).apply_keystream(out);
}

fn header_mac(keys: &HopKeys, beta: &[u8]) -> [u8; MAC_LEN] {
    let h = blake3::keyed_hash(&keys.mac_key, beta);
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&h.as_bytes()[..MAC_LEN]);
    mac
}

/// Build the header (`alpha | gamma | beta`) for `hops` into `header`, and
/// return each hop's payload seed. Cost: one fixed-base and one table
/// multiplication per hop, plus symmetric work linear in the hop count.
pub(crate) fn build_header(
    geometry: &Geometry,
    hops: &[Hop<'_>],
    rng: &mut impl CryptoRngCore,
    header: &mut [u8],
) -> Result<PayloadSeeds, SphinxError> {
    validate_path(geometry, hops)?;
    let mut commands = [[0u8; COMMAND_LEN]; MAX_HOPS_LIMIT];
    for (hop, out) in hops.iter().zip(commands.iter_mut()) {
        hop.command.encode(out);
    }
    let keys: Vec<&RouteKey> = hops.iter().map(|h| h.key).collect();
    Ok(build_header_encoded(
        geometry,
        &keys,
        &commands[..hops.len()],
        rng,
        header,
    ))
}

/// `build_header` after validation, with commands already encoded (unit
/// tests use it to forge commands no valid path contains).
fn build_header_encoded(
    geometry: &Geometry,
    hop_keys: &[&RouteKey],
    commands: &[[u8; COMMAND_LEN]],
    rng: &mut impl CryptoRngCore,
    header: &mut [u8],
) -> PayloadSeeds {
    debug_assert_eq!(header.len(), geometry.header_len());
    debug_assert_eq!(hop_keys.len(), commands.len());
    let n = hop_keys.len();
    let beta_len = geometry.beta_len();
    let stream_len = beta_len + SLOT_LEN;

    // Ephemeral scalar; alpha_0 = x * G. The running product of clamped
    // scalars is reduced modulo the group order: every point involved is in
    // the prime-order subgroup, so that gives what each hop's X25519 gives.
    let mut x = [0u8; 32];
    rng.fill_bytes(&mut x);
    let x = clamp(x);
    let mut acc = Scalar::from_bytes_mod_order(x);
    let alpha0 = (ED25519_BASEPOINT_TABLE * &acc).to_montgomery().0;

    let mut keys: Vec<HopKeys> = Vec::with_capacity(n);
    for (i, key) in hop_keys.iter().enumerate() {
        let shared = key.mul(&acc);
        let k = HopKeys::derive(&shared);
        if i + 1 < n {
            acc *= Scalar::from_bytes_mod_order(clamp(k.blinding));
        }
        keys.push(k);
    }
    acc.zeroize();

    // Filler: what the hops' shifting appends to beta, computed forward.
    let mut streams = vec![0u8; n * stream_len];
    for (i, k) in keys.iter().enumerate() {
        header_stream(k, &mut streams[i * stream_len..(i + 1) * stream_len]);
    }
    let mut filler = vec![0u8; (n - 1) * SLOT_LEN];
    for i in 0..n - 1 {
        let len = (i + 1) * SLOT_LEN;
        let stream = &streams[i * stream_len..(i + 1) * stream_len];
        let from = beta_len - i * SLOT_LEN;
        for (f, s) in filler[..len].iter_mut().zip(&stream[from..]) {
            *f ^= s;
        }
    }

    // The last hop's beta: its command, random padding (so it learns nothing
    // of the path length), then the filler; then every earlier hop's beta
    // backwards, each wrapping the next one's MAC and truncated beta.
    let mut beta = vec![0u8; beta_len];
    let open = beta_len - (n - 1) * SLOT_LEN;
    rng.fill_bytes(&mut beta[..open]);
    beta[..COMMAND_LEN].copy_from_slice(&commands[n - 1]);
    let last_stream = &streams[(n - 1) * stream_len..];
    for (b, s) in beta[..open].iter_mut().zip(last_stream) {
        *b ^= s;
    }
    beta[open..].copy_from_slice(&filler);
    let mut gamma = header_mac(&keys[n - 1], &beta);

    for i in (0..n - 1).rev() {
        // plain = command | next gamma | next beta without its last slot.
        beta.copy_within(0..beta_len - SLOT_LEN, SLOT_LEN);
        beta[..COMMAND_LEN].copy_from_slice(&commands[i]);
        beta[COMMAND_LEN..SLOT_LEN].copy_from_slice(&gamma);
        let stream = &streams[i * stream_len..];
        for (b, s) in beta.iter_mut().zip(stream) {
            *b ^= s;
        }
        gamma = header_mac(&keys[i], &beta);
    }
    streams.zeroize();

    header[..ALPHA_LEN].copy_from_slice(&alpha0);
    header[GAMMA_OFFSET..BETA_OFFSET].copy_from_slice(&gamma);
    header[BETA_OFFSET..].copy_from_slice(&beta);
    PayloadSeeds(keys.iter().map(|k| k.payload_seed).collect())
}

/// Build a packet that carries `message` along `hops` into `out` (exactly
/// `geometry.packet_len()` bytes). The first hop is the sender's provider;
/// the caller sends the packet there.
pub fn build(
    geometry: &Geometry,
    hops: &[Hop<'_>],
    message: &[u8],
    rng: &mut impl CryptoRngCore,
    out: &mut [u8],
) -> Result<(), SphinxError> {
    if out.len() != geometry.packet_len() {
        return Err(SphinxError::WrongLength {
            expected: geometry.packet_len(),
            got: out.len(),
        });
    }
    let (header, body) = out.split_at_mut(geometry.header_len());
    // Encode first so that a too-long message fails before any scalar mult.
    payload::encode(message, body)?;
    let seeds = build_header(geometry, hops, rng, header)?;
    for seed in seeds.0.iter().rev() {
        Lioness::from_seed(seed).encrypt(body);
    }
    Ok(())
}

/// A packet whose shared secret and keys are known, but whose MAC has not
/// been checked yet. Look the replay tag up, then call [`Unwrapped::finish`].
pub struct Unwrapped {
    geometry: Geometry,
    alpha: [u8; 32],
    keys: HopKeys,
}

/// The result of processing one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// What this hop must do with the packet now in the buffer.
    pub command: RoutingCommand,
    /// The replay tag of this packet at this hop.
    pub replay_tag: ReplayTag,
}

/// First half of processing a packet at a hop: length and group-element
/// checks, one scalar multiplication, key derivation. The packet is not
/// modified.
pub fn unwrap(
    geometry: &Geometry,
    secret: &SecretKey,
    packet: &[u8],
) -> Result<Unwrapped, SphinxError> {
    if packet.len() != geometry.packet_len() {
        return Err(SphinxError::WrongLength {
            expected: geometry.packet_len(),
            got: packet.len(),
        });
    }
    let mut alpha = [0u8; 32];
    alpha.copy_from_slice(&packet[..ALPHA_LEN]);
    if !is_canonical(&alpha) {
        return Err(SphinxError::NonCanonicalPoint);
    }
    let mut shared = x25519::x25519(secret.as_bytes(), &alpha).ok_or(SphinxError::LowOrderPoint)?;
    let keys = HopKeys::derive(&shared);
    shared.zeroize();
    Ok(Unwrapped {
        geometry: *geometry,
        alpha,
        keys,
    })
}

impl Unwrapped {
    /// This packet's replay tag at this hop. Look it up before `finish`, and
    /// record it only after `finish` succeeds (the MAC verified).
    pub fn replay_tag(&self) -> ReplayTag {
        ReplayTag(self.keys.replay_tag)
    }

    /// Second half: verify the MAC, then transform `packet` (the same bytes
    /// given to [`unwrap`]) in place into what the next hop (or the
    /// recipient) receives. On error the packet is left unchanged.
    ///
    /// For `Drop` the payload is left as is (the packet is discarded). For
    /// `Recipient` the header is left as is and the payload holds the
    /// plaintext: read it with [`payload::decode`], or for a reply with
    /// [`crate::SurbKeys::open_reply`].
    pub fn finish(self, packet: &mut [u8]) -> Result<Processed, SphinxError> {
        let g = &self.geometry;
        if packet.len() != g.packet_len() {
            return Err(SphinxError::WrongLength {
                expected: g.packet_len(),
                got: packet.len(),
            });
        }
        if packet[..ALPHA_LEN] != self.alpha {
            // Not the packet `unwrap` saw: a caller bug, reported as a bad MAC
            // rather than a panic.
            debug_assert!(false, "finish called with another packet");
            return Err(SphinxError::BadMac);
        }
        let beta_len = g.beta_len();
        let (header, body) = packet.split_at_mut(g.header_len());
        let mac = header_mac(&self.keys, &header[BETA_OFFSET..]);
        if !bool::from(mac.ct_eq(&header[GAMMA_OFFSET..BETA_OFFSET])) {
            return Err(SphinxError::BadMac);
        }

        // Decrypt beta plus one slot of zeros into scratch, read the command.
        let mut scratch = [0u8; STREAM_MAX];
        let plain = &mut scratch[..beta_len + SLOT_LEN];
        plain[..beta_len].copy_from_slice(&header[BETA_OFFSET..]);
        Aes128Ctr::new(
            (&self.keys.header_key).into(),
            (&self.keys.header_iv).into(),
        )
        .apply_keystream(plain);
        let mut cmd = [0u8; COMMAND_LEN];
        cmd.copy_from_slice(&plain[..COMMAND_LEN]);
        let command = RoutingCommand::decode(&cmd)?;
        let replay_tag = self.replay_tag();

        match command {
            RoutingCommand::Drop => {}
            RoutingCommand::Recipient { .. } => {
                // A reply's payload is undone by the SURB keys, which include
                // this layer, so every recipient kind is handled alike.
                Lioness::from_seed(&self.keys.payload_seed).decrypt(body);
            }
            RoutingCommand::Relay { .. } | RoutingCommand::Deliver { .. } => {
                let next_alpha = x25519::x25519(&self.keys.blinding, &self.alpha)
                    .ok_or(SphinxError::LowOrderPoint)?;
                Lioness::from_seed(&self.keys.payload_seed).decrypt(body);
                header[..ALPHA_LEN].copy_from_slice(&next_alpha);
                header[GAMMA_OFFSET..BETA_OFFSET].copy_from_slice(&plain[COMMAND_LEN..SLOT_LEN]);
                header[BETA_OFFSET..].copy_from_slice(&plain[SLOT_LEN..]);
            }
        }
        scratch.zeroize();
        Ok(Processed {
            command,
            replay_tag,
        })
    }
}

/// Process one layer in one call, without a replay check in between. For
/// tests and tools; a node uses [`unwrap`] and [`Unwrapped::finish`].
pub fn process(
    geometry: &Geometry,
    secret: &SecretKey,
    packet: &mut [u8],
) -> Result<Processed, SphinxError> {
    unwrap(geometry, secret, packet)?.finish(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{RngCore, SeedableRng};

    /// A deterministic RNG for tests (the crate has no RNG dependency).
    struct Counter(u64);
    impl RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = (self.next_u64() >> 56) as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl rand_core::CryptoRng for Counter {}
    impl SeedableRng for Counter {
        type Seed = [u8; 8];
        fn from_seed(seed: [u8; 8]) -> Self {
            Counter(u64::from_le_bytes(seed))
        }
    }

    /// A sender with valid keys but a forged command: the MAC verifies, the
    /// command does not parse, the packet is refused and left unchanged.
    #[test]
    fn unknown_or_malformed_command_under_valid_mac() {
        let g = Geometry::DEFAULT;
        let mut rng = Counter::seed_from_u64(1);
        let secret = SecretKey::generate(&mut rng);
        let key = RouteKey::new(&secret.public_key()).expect("honest key");
        for (cmd, expect) in [
            (0x00u8, SphinxError::UnknownCommand(0x00)),
            (0x05, SphinxError::UnknownCommand(0x05)),
            (0xff, SphinxError::UnknownCommand(0xff)),
            (0x03, SphinxError::MalformedCommand(0x03)),
        ] {
            let mut raw = [0u8; COMMAND_LEN];
            raw[0] = cmd;
            raw[COMMAND_LEN - 1] = 1; // makes 0x03 (Drop) malformed
            let mut pkt = vec![0u8; g.packet_len()];
            let (header, _) = pkt.split_at_mut(g.header_len());
            build_header_encoded(&g, &[&key], &[raw], &mut rng, header);
            let before = pkt.clone();
            let un = unwrap(&g, &secret, &pkt).expect("valid point");
            assert_eq!(un.finish(&mut pkt), Err(expect));
            assert_eq!(pkt, before);
        }
    }
}
