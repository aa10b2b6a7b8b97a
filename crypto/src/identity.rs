//! Ed25519 identity keys and domain-separated signatures (aws-lc's Ed25519).
//!
//! Identity keys sign what a node or an operator vouches for: a node signs
//! its mix keys and its descriptor, the operator signs the topology document.
//! They never touch packets.
//!
//! Domain separation: [`IdentityKey::sign`] signs
//! `len(context) as u8 || context || message`, never `message` alone, so a
//! signature made for one kind of thing (a context string per kind, defined
//! by the caller as a constant) can never be taken for another. A context is
//! 1 to 255 bytes.
//!
//! Invariants: the secret seed is wiped on drop; verification never panics on
//! any bytes (a wrong length is a parse error, a bad signature is `false`);
//! randomness comes from the caller (this crate is sans-IO).

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

/// Length of a public key in bytes.
pub const PUBLIC_LEN: usize = 32;
/// Length of a secret seed in bytes.
pub const SEED_LEN: usize = 32;
/// Length of a signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// Why bytes or hex are not an identity key or a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not hex at all.
    #[error("not hex")]
    NotHex,
    /// Wrong length.
    #[error("{got} bytes, expected {want}")]
    Length {
        /// Bytes found.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// aws-lc refused the seed (cannot happen for 32 bytes; kept to avoid a panic).
    #[error("the Ed25519 library refused the key")]
    Rejected,
}

fn decode_hex<const N: usize>(text: &str) -> Result<[u8; N], IdentityError> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IdentityError::NotHex);
    }
    if text.len() != 2 * N {
        return Err(IdentityError::Length {
            got: text.len() / 2,
            want: N,
        });
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = &text[2 * i..2 * i + 2];
        *o = u8::from_str_radix(pair, 16).map_err(|_| IdentityError::NotHex)?;
    }
    Ok(out)
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The message actually signed: the context's length, the context, the
/// message.
fn framed(context: &[u8], message: &[u8]) -> Vec<u8> {
    assert!(
        !context.is_empty() && context.len() <= 255,
        "a signature context is 1 to 255 bytes (a constant of the caller)"
    );
    let mut m = Vec::with_capacity(1 + context.len() + message.len());
    m.push(context.len() as u8);
    m.extend_from_slice(context);
    m.extend_from_slice(message);
    m
}

/// An Ed25519 secret key (its 32-byte seed) with its key pair.
pub struct IdentityKey {
    seed: Zeroizing<[u8; SEED_LEN]>,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityKey({})", self.public())
    }
}

impl Clone for IdentityKey {
    fn clone(&self) -> Self {
        IdentityKey::from_seed(*self.seed).expect("this seed was accepted before")
    }
}

impl IdentityKey {
    /// A fresh key from the caller's RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> IdentityKey {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        rng.fill_bytes(&mut *seed);
        IdentityKey::from_seed(*seed).expect("aws-lc accepts every 32-byte seed")
    }

    /// The key with this seed (RFC 8032's 32-byte private key).
    pub fn from_seed(seed: [u8; SEED_LEN]) -> Result<IdentityKey, IdentityError> {
        let seed = Zeroizing::new(seed);
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&*seed).map_err(|_| IdentityError::Rejected)?;
        Ok(IdentityKey { seed, pair })
    }

    /// Parse the seed from hex (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Result<IdentityKey, IdentityError> {
        let seed = Zeroizing::new(decode_hex::<SEED_LEN>(text)?);
        IdentityKey::from_seed(*seed)
    }

    /// The seed as hex, for the key file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(encode_hex(&*self.seed))
    }

    /// The public key.
    pub fn public(&self) -> IdentityPublic {
        let mut b = [0u8; PUBLIC_LEN];
        b.copy_from_slice(self.pair.public_key().as_ref());
        IdentityPublic(b)
    }

    /// Sign `message` under `context` (see the module doc).
    ///
    /// Panics if `context` is empty or longer than 255 bytes: contexts are
    /// constants of the calling code, never input.
    pub fn sign(&self, context: &[u8], message: &[u8]) -> Signature {
        let sig = self.pair.sign(&framed(context, message));
        let mut b = [0u8; SIGNATURE_LEN];
        b.copy_from_slice(sig.as_ref());
        Signature(b)
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityPublic(pub [u8; PUBLIC_LEN]);

impl IdentityPublic {
    /// Parse 64 hex digits.
    pub fn from_hex(text: &str) -> Result<IdentityPublic, IdentityError> {
        decode_hex(text).map(IdentityPublic)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// The first 8 bytes in hex: a short fingerprint for people to compare.
    pub fn fingerprint(&self) -> String {
        encode_hex(&self.0[..8])
    }

    /// Does `signature` sign `message` under `context` with this key?
    /// Any bytes are safe: a non-point key or a malformed signature is `false`.
    pub fn verify(&self, context: &[u8], message: &[u8], signature: &Signature) -> bool {
        UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(&framed(context, message), &signature.0)
            .is_ok()
    }
}

impl std::fmt::Display for IdentityPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for IdentityPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityPublic({})", self.fingerprint())
    }
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl Signature {
    /// Parse 128 hex digits.
    pub fn from_hex(text: &str) -> Result<Signature, IdentityError> {
        decode_hex(text).map(Signature)
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({}..)", encode_hex(&self.0[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn sign_verify_and_domain_separation() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let k = IdentityKey::generate(&mut rng);
        let p = k.public();
        let s = k.sign(b"ctx a", b"hello");
        assert!(p.verify(b"ctx a", b"hello", &s));
        assert!(!p.verify(b"ctx b", b"hello", &s), "other context");
        assert!(!p.verify(b"ctx a", b"hellp", &s), "other message");
        // The framing keeps context and message apart.
        assert!(!p.verify(b"ctx ah", b"ello", &s));
        let mut bad = s;
        bad.0[10] ^= 1;
        assert!(!p.verify(b"ctx a", b"hello", &bad));
        let other = IdentityKey::generate(&mut rng).public();
        assert!(!other.verify(b"ctx a", b"hello", &s));
        // Garbage keys and signatures are just `false`.
        assert!(!IdentityPublic([0xff; 32]).verify(b"ctx a", b"hello", &s));
        assert!(!p.verify(b"ctx a", b"hello", &Signature([0xff; 64])));
    }

    #[test]
    fn hex_round_trips_and_errors() {
        let k = IdentityKey::from_seed([3; 32]).expect("seed");
        let k2 = IdentityKey::from_hex(&k.to_hex()).expect("hex");
        assert_eq!(k.public(), k2.public());
        let p = k.public();
        assert_eq!(IdentityPublic::from_hex(&p.to_hex()), Ok(p));
        assert_eq!(
            IdentityPublic::from_hex("abcd"),
            Err(IdentityError::Length { got: 2, want: 32 })
        );
        assert_eq!(IdentityPublic::from_hex("zz"), Err(IdentityError::NotHex));
        assert_eq!(IdentityPublic::from_hex("é1"), Err(IdentityError::NotHex));
        let s = k.sign(b"c", b"m");
        assert_eq!(Signature::from_hex(&s.to_hex()), Ok(s));
        assert_eq!(p.fingerprint().len(), 16);
    }

    /// RFC 8032 section 7.1, test 1 (empty message): our framing changes the
    /// signed bytes, so check the key derivation and the raw signature.
    #[test]
    fn rfc8032_test_1() {
        let seed: [u8; 32] =
            decode_hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .expect("hex");
        let k = IdentityKey::from_seed(seed).expect("seed");
        assert_eq!(
            k.public().to_hex(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let raw = k.pair.sign(b"");
        assert_eq!(
            encode_hex(raw.as_ref()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }
}
