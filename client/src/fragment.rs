//! Message fragments: how a message longer than one payload is split, how a
//! SURB rides in the first fragment, and bounded reassembly.
//!
//! Fragment layout (inside the end-to-end payload; integers big-endian):
//! version (1, `0x01`) | message id (16) | index (u16) | count (u16) |
//! SURB length (u16) | SURB (that many bytes) | data (the rest).
//!
//! Invariants: `1 <= count <= limit`, `index < count`, every fragment of a
//! message agrees on `count`; at most `max_partial` messages are held, the
//! oldest evicted first (and counted); parsing never panics.

use std::collections::{HashMap, VecDeque};

use loopix_crypto::{Geometry, Surb};

/// Bytes of the fragment header.
pub const FRAGMENT_HEADER_LEN: usize = 1 + 16 + 2 + 2 + 2;
const VERSION: u8 = 0x01;

/// A parsed fragment, borrowing the payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// Message id.
    pub id: [u8; 16],
    /// Position.
    pub index: u16,
    /// Fragments in the message.
    pub count: u16,
    /// The sender's SURB bytes, if any.
    pub surb: Option<&'a [u8]>,
    /// Message bytes.
    pub data: &'a [u8],
}

/// Why a fragment was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ReassemblyError {
    /// Not a fragment of this version, or inconsistent fields.
    Malformed,
}

impl<'a> Fragment<'a> {
    /// Parse one payload plaintext.
    pub fn parse(b: &'a [u8]) -> Result<Fragment<'a>, ReassemblyError> {
        if b.len() < FRAGMENT_HEADER_LEN || b[0] != VERSION {
            return Err(ReassemblyError::Malformed);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[1..17]);
        let index = u16::from_be_bytes([b[17], b[18]]);
        let count = u16::from_be_bytes([b[19], b[20]]);
        let surb_len = usize::from(u16::from_be_bytes([b[21], b[22]]));
        if count == 0 || index >= count {
            return Err(ReassemblyError::Malformed);
        }
        let rest = &b[FRAGMENT_HEADER_LEN..];
        if surb_len > rest.len() {
            return Err(ReassemblyError::Malformed);
        }
        let (surb, data) = rest.split_at(surb_len);
        Ok(Fragment {
            id,
            index,
            count,
            surb: (surb_len > 0).then_some(surb),
            data,
        })
    }
}

/// Message bytes one fragment carries.
pub fn data_capacity(g: &Geometry, with_surb: bool) -> usize {
    let surb = if with_surb {
        loopix_crypto::surb::surb_len(g)
    } else {
        0
    };
    g.message_capacity() - FRAGMENT_HEADER_LEN - surb
}

fn header(id: [u8; 16], index: u16, count: u16, surb_len: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(FRAGMENT_HEADER_LEN);
    v.push(VERSION);
    v.extend_from_slice(&id);
    v.extend_from_slice(&index.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(&surb_len.to_be_bytes());
    v
}

/// Fragments a message of `len` bytes takes (the first one smaller by a
/// SURB with `with_surb`).
pub fn fragments_needed(g: &Geometry, len: usize, with_surb: bool) -> usize {
    let first_cap = data_capacity(g, with_surb);
    if len <= first_cap {
        1
    } else {
        1 + (len - first_cap).div_ceil(data_capacity(g, false))
    }
}

/// Split `data` into fragments; with `with_surb` the first one reserves
/// room for a SURB (filled by [`attach_surb`]). `Err(needed)` if more than
/// `max` fragments would be needed.
pub fn split(
    g: &Geometry,
    id: [u8; 16],
    data: &[u8],
    with_surb: bool,
    max: u16,
) -> Result<Vec<Vec<u8>>, usize> {
    let first_cap = data_capacity(g, with_surb);
    let cap = data_capacity(g, false);
    let needed = fragments_needed(g, data.len(), with_surb);
    if needed > usize::from(max) {
        return Err(needed);
    }
    let count = needed as u16;
    let surb_len = if with_surb {
        loopix_crypto::surb::surb_len(g) as u16
    } else {
        0
    };
    let mut out = Vec::with_capacity(needed);
    let first_len = data.len().min(first_cap);
    let mut f = header(id, 0, count, surb_len);
    f.resize(FRAGMENT_HEADER_LEN + usize::from(surb_len), 0);
    f.extend_from_slice(&data[..first_len]);
    out.push(f);
    for (i, chunk) in data[first_len..].chunks(cap).enumerate() {
        let mut f = header(id, i as u16 + 1, count, 0);
        f.extend_from_slice(chunk);
        out.push(f);
    }
    Ok(out)
}

/// Write `surb` into the room `split` reserved in a first fragment; if it
/// does not fit exactly (SURB creation failed: empty), drop the room.
pub fn attach_surb(fragment: &mut Vec<u8>, surb: &[u8]) {
    let reserved = usize::from(u16::from_be_bytes([fragment[21], fragment[22]]));
    if surb.len() == reserved {
        fragment[FRAGMENT_HEADER_LEN..FRAGMENT_HEADER_LEN + reserved].copy_from_slice(surb);
    } else {
        fragment.drain(FRAGMENT_HEADER_LEN..FRAGMENT_HEADER_LEN + reserved);
        fragment[21..23].copy_from_slice(&0u16.to_be_bytes());
    }
}

/// A whole message.
pub struct Complete {
    /// Message id.
    pub id: [u8; 16],
    /// Bytes, in order.
    pub data: Vec<u8>,
    /// The sender's SURB, if it attached a valid one.
    pub surb: Option<Surb>,
}

struct Partial {
    count: u16,
    received: u16,
    parts: Vec<Option<Vec<u8>>>,
    surb: Option<Vec<u8>>,
}

/// Messages being reassembled, bounded.
pub struct Reassembly {
    max_partial: usize,
    max_fragments: u16,
    partial: HashMap<[u8; 16], Partial>,
    order: VecDeque<[u8; 16]>,
    evicted: u64,
}

impl Reassembly {
    /// At most `max_partial` messages of at most `max_fragments` each.
    pub fn new(max_partial: usize, max_fragments: u16) -> Self {
        Reassembly {
            max_partial: max_partial.max(1),
            max_fragments,
            partial: HashMap::new(),
            order: VecDeque::new(),
            evicted: 0,
        }
    }

    /// Partial messages evicted for space so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Take one fragment; returns the message when it is complete.
    /// Duplicates are ignored.
    pub fn add(&mut self, g: &Geometry, body: &[u8]) -> Result<Option<Complete>, ReassemblyError> {
        let f = Fragment::parse(body)?;
        if f.count > self.max_fragments {
            return Err(ReassemblyError::Malformed);
        }
        if f.count == 1 {
            return Ok(Some(Complete {
                id: f.id,
                data: f.data.to_vec(),
                surb: f.surb.and_then(|s| Surb::from_bytes(g, s).ok()),
            }));
        }
        if !self.partial.contains_key(&f.id) {
            while self.partial.len() >= self.max_partial {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                if self.partial.remove(&old).is_some() {
                    self.evicted += 1;
                }
            }
            self.partial.insert(
                f.id,
                Partial {
                    count: f.count,
                    received: 0,
                    parts: vec![None; usize::from(f.count)],
                    surb: None,
                },
            );
            self.order.push_back(f.id);
        }
        let p = self
            .partial
            .get_mut(&f.id)
            .ok_or(ReassemblyError::Malformed)?;
        if p.count != f.count {
            return Err(ReassemblyError::Malformed);
        }
        let slot = &mut p.parts[usize::from(f.index)];
        if slot.is_none() {
            *slot = Some(f.data.to_vec());
            p.received += 1;
            if let Some(s) = f.surb {
                p.surb = Some(s.to_vec());
            }
        }
        if p.received < p.count {
            return Ok(None);
        }
        let p = self
            .partial
            .remove(&f.id)
            .ok_or(ReassemblyError::Malformed)?;
        self.order.retain(|x| *x != f.id);
        let data = p.parts.into_iter().flatten().flatten().collect();
        Ok(Some(Complete {
            id: f.id,
            data,
            surb: p.surb.and_then(|s| Surb::from_bytes(g, &s).ok()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_reassemble_out_of_order_with_duplicates() {
        let g = Geometry::DEFAULT;
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut frags = split(&g, [7; 16], &data, true, 64).expect("fits");
        assert!(frags.len() >= 5);
        for f in &frags {
            assert!(f.len() <= g.message_capacity());
        }
        attach_surb(&mut frags[0], &[]); // no SURB after all
        let mut r = Reassembly::new(4, 64);
        let mut done = None;
        for i in (0..frags.len()).rev().chain([0, 1]) {
            if let Some(c) = r.add(&g, &frags[i]).expect("valid") {
                done = Some(c);
            }
        }
        let c = done.expect("complete");
        assert_eq!(c.data, data);
        assert!(c.surb.is_none());
    }

    #[test]
    fn bounds_and_garbage() {
        let g = Geometry::DEFAULT;
        assert_eq!(
            split(&g, [1; 16], &vec![0u8; 100_000], false, 4)
                .err()
                .map(|n| n > 4),
            Some(true)
        );
        let mut r = Reassembly::new(2, 8);
        for id in 0..5u8 {
            let frags = split(&g, [id; 16], &vec![id; 3000], false, 8).expect("fits");
            r.add(&g, &frags[0]).expect("valid");
        }
        assert_eq!(r.evicted(), 3);
        for junk in [&[][..], &[1u8; 5], &[9u8; 40]] {
            assert!(r.add(&g, junk).is_err());
        }
        let mut bad = header([3; 16], 5, 2, 0);
        bad.push(1);
        assert!(Fragment::parse(&bad).is_err());
        let mut long_surb = header([3; 16], 0, 1, 500);
        long_surb.push(1);
        assert!(Fragment::parse(&long_surb).is_err());
    }
}
