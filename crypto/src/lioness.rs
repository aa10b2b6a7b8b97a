//! LIONESS wide-block cipher (Anderson and Biham) over a packet payload.
//!
//! Built from AES-128-CTR as the stream cipher and keyed BLAKE3 as the hash.
//! The block is split into `L` (32 bytes) and `R` (the rest); four Feistel
//! rounds make every output bit depend on every input bit, so a flipped bit
//! anywhere turns the whole block into noise after decryption. That is what
//! defeats tagging attacks on the payload.
//!
//! Invariant: `decrypt(encrypt(x)) == x` for any block of at least
//! `BLOCK_KEY_LEN + 1` bytes; keys are zeroized on drop. With `R` a multiple
//! of 1 KiB, BLAKE3 hashes whole chunks.

use aes::Aes128;
use ctr::cipher::{KeyIvInit, StreamCipher};
use zeroize::{Zeroize, ZeroizeOnDrop};

type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// Bytes of the left half of the block, which keys the stream cipher.
pub(crate) const BLOCK_KEY_LEN: usize = 32;

const LIONESS_CONTEXT: &str = "loopix-sphinx 2026-11 lioness keys v1";

/// The four round keys of one LIONESS instance.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct Lioness {
    k1: [u8; 32],
    k2: [u8; 32],
    k3: [u8; 32],
    k4: [u8; 32],
}

impl Lioness {
    /// Expand a 32-byte seed into the four round keys.
    pub(crate) fn from_seed(seed: &[u8; 32]) -> Self {
        let mut out = [0u8; 128];
        blake3::Hasher::new_derive_key(LIONESS_CONTEXT)
            .update(seed)
            .finalize_xof()
            .fill(&mut out);
        let mut l = Lioness {
            k1: [0; 32],
            k2: [0; 32],
            k3: [0; 32],
            k4: [0; 32],
        };
        l.k1.copy_from_slice(&out[0..32]);
        l.k2.copy_from_slice(&out[32..64]);
        l.k3.copy_from_slice(&out[64..96]);
        l.k4.copy_from_slice(&out[96..128]);
        out.zeroize();
        l
    }

    /// Encrypt `block` in place. `block` must be longer than `BLOCK_KEY_LEN`.
    pub(crate) fn encrypt(&self, block: &mut [u8]) {
        debug_assert!(block.len() > BLOCK_KEY_LEN);
        let (l, r) = block.split_at_mut(BLOCK_KEY_LEN);
        let l: &mut [u8; 32] = l.try_into().expect("split at 32");
        stream_round(l, &self.k1, r);
        hash_round(l, &self.k2, r);
        stream_round(l, &self.k3, r);
        hash_round(l, &self.k4, r);
    }

    /// Decrypt `block` in place: the rounds of `encrypt` in reverse order.
    pub(crate) fn decrypt(&self, block: &mut [u8]) {
        debug_assert!(block.len() > BLOCK_KEY_LEN);
        let (l, r) = block.split_at_mut(BLOCK_KEY_LEN);
        let l: &mut [u8; 32] = l.try_into().expect("split at 32");
        hash_round(l, &self.k4, r);
        stream_round(l, &self.k3, r);
        hash_round(l, &self.k2, r);
        stream_round(l, &self.k1, r);
    }
}

/// `R ^= AES-128-CTR(key = (L ^ K)[..16], iv = (L ^ K)[16..])`.
fn stream_round(l: &[u8; 32], k: &[u8; 32], r: &mut [u8]) {
    let mut key = [0u8; 32];
    for i in 0..32 {
        key[i] = l[i] ^ k[i];
    }
    let (aes_key, iv) = key.split_at(16);
    let mut cipher = Aes128Ctr::new(aes_key.into(), iv.into());
    cipher.apply_keystream(r);
    key.zeroize();
}

/// `L ^= BLAKE3_keyed(K, R)`.
fn hash_round(l: &mut [u8; 32], k: &[u8; 32], r: &[u8]) {
    let h = blake3::keyed_hash(k, r);
    for (a, b) in l.iter_mut().zip(h.as_bytes()) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_diffusion() {
        let lion = Lioness::from_seed(&[9u8; 32]);
        let plain: Vec<u8> = (0..1056u32).map(|i| i as u8).collect();
        let mut block = plain.clone();
        lion.encrypt(&mut block);
        assert_ne!(block, plain);
        let mut copy = block.clone();
        lion.decrypt(&mut copy);
        assert_eq!(copy, plain);
        // One flipped ciphertext bit changes about half of all plaintext bits.
        for pos in [0usize, 31, 32, 500, 1055] {
            let mut bad = block.clone();
            bad[pos] ^= 0x10;
            lion.decrypt(&mut bad);
            let diff: u32 = bad
                .iter()
                .zip(&plain)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            let bits = 1056 * 8;
            assert!(
                diff > bits * 4 / 10 && diff < bits * 6 / 10,
                "pos {pos}: {diff}"
            );
        }
    }

    /// NIST SP 800-38A F.5.1, CTR-AES128.Encrypt: checks the stream cipher
    /// this module (and the header) is built on.
    #[test]
    fn aes128_ctr_sp800_38a() {
        let key: [u8; 16] = [
            0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf,
            0x4f, 0x3c,
        ];
        let iv: [u8; 16] = [
            0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd,
            0xfe, 0xff,
        ];
        let mut block: [u8; 32] = [
            0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93,
            0x17, 0x2a, 0xae, 0x2d, 0x8a, 0x57, 0x1e, 0x03, 0xac, 0x9c, 0x9e, 0xb7, 0x6f, 0xac,
            0x45, 0xaf, 0x8e, 0x51,
        ];
        let expect: [u8; 32] = [
            0x87, 0x4d, 0x61, 0x91, 0xb6, 0x20, 0xe3, 0x26, 0x1b, 0xef, 0x68, 0x64, 0x99, 0x0d,
            0xb6, 0xce, 0x98, 0x06, 0xf6, 0x6b, 0x79, 0x70, 0xfd, 0xff, 0x86, 0x17, 0x18, 0x7b,
            0xb9, 0xff, 0xfd, 0xff,
        ];
        Aes128Ctr::new(&key.into(), &iv.into()).apply_keystream(&mut block);
        assert_eq!(block, expect);
    }

    /// BLAKE3's published test vectors (test_vectors.json): input of length
    /// 0 and 1024, bytes `i % 251`, first 32 bytes of output.
    #[test]
    fn blake3_published_vectors() {
        let input: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            blake3::hash(&input[..0]).to_hex().as_str(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            blake3::hash(&input).to_hex().as_str(),
            "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7"
        );
        let key: [u8; 32] = *b"whats the Elvish word for friend";
        assert_eq!(
            blake3::keyed_hash(&key, &input[..0]).to_hex().as_str(),
            "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26"
        );
    }
}
