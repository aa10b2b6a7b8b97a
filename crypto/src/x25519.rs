//! The one audited `unsafe` block of this crate: X25519 through aws-lc.
//!
//! aws-lc-rs's safe `agreement` API wraps each private key in an `EVP_PKEY`.
//! With a static key it costs the same as this call (peer-compare measures
//! both), but a hop's second multiplication uses a blinding scalar that is
//! new for every packet, which the safe API would turn into a key object
//! built and freed per packet. So the packet path calls aws-lc's `X25519`
//! directly. It is about twice as fast here as x25519-dalek's ladder
//! (DESIGN.md section 3).
//!
//! Audit: both functions pass pointers to fixed-size 32-byte arrays that live
//! for the whole call; aws-lc reads exactly 32 bytes from each input pointer
//! and writes exactly 32 bytes to the output pointer, and keeps no pointer
//! after it returns. `X25519` clamps the scalar itself and returns 0 when the
//! result is all zeros (a low-order input point).
#![allow(unsafe_code)] // reason: FFI to aws-lc's X25519, audited above

/// `clamp(scalar) * point` on Curve25519, or `None` if the result is the
/// all-zero point (the input had low order).
pub(crate) fn x25519(scalar: &[u8; 32], point: &[u8; 32]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    // SAFETY: see the module audit: three valid, non-overlapping 32-byte buffers.
    let ok = unsafe { aws_lc_sys::X25519(out.as_mut_ptr(), scalar.as_ptr(), point.as_ptr()) };
    (ok == 1).then_some(out)
}

/// `clamp(scalar) * basepoint`: the public key of a secret scalar.
pub(crate) fn x25519_base(scalar: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // SAFETY: see the module audit: two valid, non-overlapping 32-byte buffers.
    unsafe { aws_lc_sys::X25519_public_from_private(out.as_mut_ptr(), scalar.as_ptr()) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect();
        v.try_into().expect("32 bytes")
    }

    /// RFC 7748 section 5.2, the two single-operation vectors.
    #[test]
    fn rfc7748_vectors() {
        let k = h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
        let u = h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c");
        let out = h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
        assert_eq!(x25519(&k, &u), Some(out));
        let k = h("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d");
        let u = h("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493");
        let out = h("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957");
        assert_eq!(x25519(&k, &u), Some(out));
    }

    /// RFC 7748 section 6.1, Diffie-Hellman between Alice and Bob.
    #[test]
    fn rfc7748_diffie_hellman() {
        let a = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let a_pub = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let b = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        let b_pub = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(x25519_base(&a), a_pub);
        assert_eq!(x25519_base(&b), b_pub);
        assert_eq!(x25519(&a, &b_pub), Some(shared));
        assert_eq!(x25519(&b, &a_pub), Some(shared));
    }

    /// RFC 7748 section 5.2, iterated 1,000 times.
    #[test]
    fn rfc7748_iterated_1000() {
        let mut k = h("0900000000000000000000000000000000000000000000000000000000000000");
        let mut u = k;
        for _ in 0..1000 {
            let out = x25519(&k, &u).expect("not low order");
            u = k;
            k = out;
        }
        assert_eq!(
            k,
            h("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
        );
    }

    #[test]
    fn low_order_point_is_refused() {
        let zero = [0u8; 32];
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(x25519(&[7u8; 32], &zero), None);
        assert_eq!(x25519(&[7u8; 32], &one), None);
    }
}
