//! End-to-end payload plaintext: what the recipient reads after removing
//! every layer.
//!
//! Layout (`payload_len` bytes): 16 zero bytes, the message length (u16
//! big-endian), the message, zero padding. The zero prefix is the integrity
//! check: a payload that was tampered with anywhere decrypts to noise, and
//! noise has a zero prefix with probability 2^-128.

use crate::error::SphinxError;

/// Bytes of the zero prefix that authenticates the plaintext.
pub const ZERO_PREFIX_LEN: usize = 16;
/// Bytes of the length field.
pub const LENGTH_LEN: usize = 2;
/// Payload bytes not available to the message.
pub const OVERHEAD: usize = ZERO_PREFIX_LEN + LENGTH_LEN;

/// Write `message` into the plaintext `out` (one whole payload).
pub fn encode(message: &[u8], out: &mut [u8]) -> Result<(), SphinxError> {
    // The length field is a u16: a larger buffer still carries at most
    // 65535 message bytes.
    let max = out
        .len()
        .saturating_sub(OVERHEAD)
        .min(usize::from(u16::MAX));
    if message.len() > max {
        return Err(SphinxError::MessageTooLong {
            got: message.len(),
            max,
        });
    }
    out.fill(0);
    let len = u16::try_from(message.len()).map_err(|_| SphinxError::MessageTooLong {
        got: message.len(),
        max,
    })?;
    out[ZERO_PREFIX_LEN..OVERHEAD].copy_from_slice(&len.to_be_bytes());
    out[OVERHEAD..OVERHEAD + message.len()].copy_from_slice(message);
    Ok(())
}

/// The message inside a decrypted payload, or `BadPayload` if the zero
/// prefix, the length or the padding does not check.
pub fn decode(plain: &[u8]) -> Result<&[u8], SphinxError> {
    if plain.len() < OVERHEAD {
        return Err(SphinxError::BadPayload);
    }
    // Not secret-dependent in a way an attacker can use: a failing check
    // only tells the recipient itself that the payload was noise.
    if plain[..ZERO_PREFIX_LEN].iter().any(|&b| b != 0) {
        return Err(SphinxError::BadPayload);
    }
    let len = usize::from(u16::from_be_bytes([
        plain[ZERO_PREFIX_LEN],
        plain[ZERO_PREFIX_LEN + 1],
    ]));
    let body = &plain[OVERHEAD..];
    if len > body.len() || body[len..].iter().any(|&b| b != 0) {
        return Err(SphinxError::BadPayload);
    }
    Ok(&body[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let mut buf = [0u8; 64];
        encode(b"hello", &mut buf).expect("fits");
        assert_eq!(decode(&buf), Ok(&b"hello"[..]));
        encode(&[], &mut buf).expect("fits");
        assert_eq!(decode(&buf), Ok(&[][..]));
        assert!(encode(&[1u8; 47], &mut buf).is_err());
        encode(&[1u8; 46], &mut buf).expect("exactly fits");
        let mut bad = buf;
        bad[3] = 1;
        assert_eq!(decode(&bad), Err(SphinxError::BadPayload));
        let mut bad = buf;
        bad[17] = 200; // length beyond the body
        assert_eq!(decode(&bad), Err(SphinxError::BadPayload));
        assert_eq!(decode(&[0u8; 5]), Err(SphinxError::BadPayload));
        let mut pad = [0u8; 64];
        encode(b"ab", &mut pad).expect("fits");
        pad[40] = 1; // garbage in the padding
        assert_eq!(decode(&pad), Err(SphinxError::BadPayload));
    }

    /// Regression: a buffer over 65553 bytes let a message longer than the
    /// u16 length field encode, and then fail to decode.
    #[test]
    fn bug_length_field_overflow() {
        let mut big = vec![0u8; 70_000];
        let msg = vec![7u8; 65_536];
        assert!(matches!(
            encode(&msg, &mut big),
            Err(SphinxError::MessageTooLong { max: 65_535, .. })
        ));
        encode(&msg[..65_535], &mut big).expect("fits the length field");
        assert_eq!(decode(&big).map(<[u8]>::len), Ok(65_535));
    }
}
