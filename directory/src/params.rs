//! The network's public parameters, carried in the signed topology
//! document: the per-hop delay, the clients' three Poisson rates and pull
//! period, the nodes' loop rate, the pull answer size, the packet geometry
//! and the path MTU it must fit.
//!
//! Loopix's guarantees hold for clients that look alike (paper section 4):
//! a client that picks its own rates is told apart by them. So every client
//! and node takes these from the document its operator signed, and a client
//! may use other rates only as a development override the document allows
//! (`allow_rate_overrides`); providers refuse the pulls and packets of a
//! client whose announced rates differ from the document's otherwise.
//!
//! Invariants ([`NetworkParams::check`], each error naming the field):
//! rates are finite and not negative (`lambda_p` above 0), the mean delay is
//! above 0, the pull period and `k` are in range, the geometry is one
//! [`Geometry::new`] accepts, and the largest datagram it makes (a pull
//! answer frame, plus 48 bytes of IPv6 and UDP headers) fits `mtu`.

use loopix_crypto::{access, Geometry};
use serde::{Deserialize, Serialize};

/// Bytes of IPv6 and UDP headers in front of every datagram (the larger of
/// IPv4's 28 and IPv6's 48).
pub const IP_UDP_HEADERS: usize = 48;
/// Mix layers a geometry chosen by [`NetworkParams::for_layers`] serves.
pub const MAX_LAYERS: u8 = 10;
/// Sphinx hops a path has beyond one per mix layer: the sender's provider,
/// the recipient's provider and the recipient.
pub const PATH_HOPS_BEYOND_LAYERS: usize = 3;

/// What every client and node of one network uses (paper sections 2 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkParams {
    /// Mean per-hop delay (1/µ), milliseconds.
    pub mean_delay_ms: f64,
    /// Each client's payload stream (real messages or drops), per second.
    pub lambda_p: f64,
    /// Each client's loop stream, per second.
    pub lambda_l: f64,
    /// Each client's drop stream, per second.
    pub lambda_d: f64,
    /// Each node's own loops, per second.
    pub lambda_m: f64,
    /// How often a client pulls its inbox, milliseconds.
    pub pull_period_ms: u64,
    /// Frames in every pull answer (k).
    pub pull_frames: u16,
    /// Sphinx hops a packet's header holds.
    pub max_hops: u8,
    /// Bytes of a packet's encrypted payload.
    pub payload_len: u32,
    /// The path MTU the network's datagrams must fit, bytes.
    pub mtu: u32,
    /// Clients may announce rates other than these (tests and development
    /// only: such a client is told apart by its rates).
    pub allow_rate_overrides: bool,
}

/// A client's rates, as it announces them to its provider.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientRates {
    /// Payload stream, per second.
    pub lambda_p: f64,
    /// Loop stream, per second.
    pub lambda_l: f64,
    /// Drop stream, per second.
    pub lambda_d: f64,
    /// Mean per-hop delay, milliseconds.
    pub mean_delay_ms: f64,
    /// Pull period, milliseconds.
    pub pull_period_ms: u64,
}

impl ClientRates {
    /// The 8 bytes a client puts in its pull requests: the first bytes of a
    /// BLAKE3 hash of its rates, so a provider can compare them with the
    /// document's without the request growing with them.
    pub fn digest(&self) -> [u8; 8] {
        let mut h = blake3::Hasher::new_derive_key("loopix client rates v1");
        for v in [
            self.lambda_p,
            self.lambda_l,
            self.lambda_d,
            self.mean_delay_ms,
        ] {
            h.update(&v.to_bits().to_be_bytes());
        }
        h.update(&self.pull_period_ms.to_be_bytes());
        let mut out = [0u8; 8];
        out.copy_from_slice(&h.finalize().as_bytes()[..8]);
        out
    }
}

impl Default for NetworkParams {
    /// The paper's evaluation rates where it gives them (λM = 10 per
    /// minute, µ = 1000/s), interactive client rates (a short message
    /// leaves within about a second), three layers.
    fn default() -> Self {
        NetworkParams::for_layers(3)
    }
}

impl NetworkParams {
    /// The default rates, with the geometry for `layers` mix layers: the
    /// default geometry's six hops, or as many as a longer path needs, and
    /// the default payload, shrunk where the longer header would push a
    /// frame past a 1500-byte MTU.
    pub fn for_layers(layers: u8) -> NetworkParams {
        let mut p = NetworkParams {
            mean_delay_ms: 1.0,
            lambda_p: 2.0,
            lambda_l: 1.0,
            lambda_d: 1.0,
            lambda_m: 10.0 / 60.0,
            pull_period_ms: 1000,
            pull_frames: 8,
            max_hops: 0,
            payload_len: 0,
            mtu: 1500,
            allow_rate_overrides: false,
        };
        p.set_geometry_for(layers);
        p
    }

    /// Set `max_hops` for `layers` mix layers (at least the default
    /// geometry's six, so that one to three layers share the packet format)
    /// and the largest payload up to the default one that keeps every
    /// datagram within `mtu`.
    pub fn set_geometry_for(&mut self, layers: u8) {
        let hops =
            (usize::from(layers) + PATH_HOPS_BEYOND_LAYERS).max(Geometry::DEFAULT.max_hops());
        self.max_hops = hops.min(usize::from(u8::MAX)) as u8;
        let default_payload = Geometry::DEFAULT.payload_len();
        let header = Geometry::new(hops.clamp(2, 16), 64)
            .map(|g| g.header_len())
            .unwrap_or(0);
        let fixed = access::delivery_frame_len(&Geometry::DEFAULT) - Geometry::DEFAULT.packet_len();
        let room = (self.mtu as usize).saturating_sub(IP_UDP_HEADERS + fixed + header);
        self.payload_len = room.min(default_payload) as u32;
    }

    /// The packet geometry (checked by [`Self::check`]).
    pub fn geometry(&self) -> Result<Geometry, String> {
        Geometry::new(usize::from(self.max_hops), self.payload_len as usize).map_err(|e| {
            format!(
                "params.max_hops = {} and params.payload_len = {}: {e}",
                self.max_hops, self.payload_len
            )
        })
    }

    /// The clients' rates.
    pub fn client_rates(&self) -> ClientRates {
        ClientRates {
            lambda_p: self.lambda_p,
            lambda_l: self.lambda_l,
            lambda_d: self.lambda_d,
            mean_delay_ms: self.mean_delay_ms,
            pull_period_ms: self.pull_period_ms,
        }
    }

    /// Every field in range, and a path through `layers` mix layers fits
    /// the geometry. The error names the field and the range.
    pub fn check(&self, layers: u8) -> Result<(), String> {
        check_rate("params.lambda_p", self.lambda_p, false)?;
        check_rate("params.lambda_l", self.lambda_l, true)?;
        check_rate("params.lambda_d", self.lambda_d, true)?;
        check_rate("params.lambda_m", self.lambda_m, true)?;
        let d = self.mean_delay_ms;
        if !d.is_finite() || d <= 0.0 || d > 3_600_000.0 {
            return Err(format!(
                "params.mean_delay_ms is {d}; use above 0 and at most 3600000 (one hour)"
            ));
        }
        if !(1..=3_600_000).contains(&self.pull_period_ms) {
            return Err(format!(
                "params.pull_period_ms is {}; use 1 to 3600000",
                self.pull_period_ms
            ));
        }
        if !(1..=1024).contains(&self.pull_frames) {
            return Err(format!(
                "params.pull_frames is {}; use 1 to 1024",
                self.pull_frames
            ));
        }
        if !(576..=65_535).contains(&self.mtu) {
            return Err(format!(
                "params.mtu is {}; use 576 to 65535 bytes",
                self.mtu
            ));
        }
        let g = self.geometry()?;
        let needed = usize::from(layers) + PATH_HOPS_BEYOND_LAYERS;
        if needed > g.max_hops() {
            return Err(format!(
                "params.max_hops is {} but a path through {layers} layers takes {needed} hops; \
                 use max_hops {needed} or more",
                g.max_hops()
            ));
        }
        let datagram = access::delivery_frame_len(&g) + IP_UDP_HEADERS;
        if datagram > self.mtu as usize {
            return Err(format!(
                "params.payload_len {} with params.max_hops {} makes {datagram}-byte datagrams \
                 (a pull answer frame and {IP_UDP_HEADERS} bytes of headers), over params.mtu {}; \
                 lower payload_len to {} or raise mtu",
                self.payload_len,
                self.max_hops,
                self.mtu,
                (self.payload_len as usize).saturating_sub(datagram - self.mtu as usize)
            ));
        }
        Ok(())
    }

    /// The canonical encoding the operator's signature covers
    /// (`docs/topology.md`): rates as IEEE 754 bits, big-endian.
    pub fn put_canonical(&self, out: &mut Vec<u8>) {
        for v in [
            self.mean_delay_ms,
            self.lambda_p,
            self.lambda_l,
            self.lambda_d,
            self.lambda_m,
        ] {
            out.extend_from_slice(&v.to_bits().to_be_bytes());
        }
        out.extend_from_slice(&self.pull_period_ms.to_be_bytes());
        out.extend_from_slice(&self.pull_frames.to_be_bytes());
        out.push(self.max_hops);
        out.extend_from_slice(&self.payload_len.to_be_bytes());
        out.extend_from_slice(&self.mtu.to_be_bytes());
        out.push(u8::from(self.allow_rate_overrides));
    }
}

/// A rate per second: finite, not negative (nor -0), at most 10^6, and
/// above 0 unless `zero_ok`.
fn check_rate(field: &str, v: f64, zero_ok: bool) -> Result<(), String> {
    let ok = v.is_finite() && !v.is_sign_negative() && v <= 1e6 && (zero_ok || v > 0.0);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} is {v}; use a rate per second {} 1000000",
            if zero_ok {
                "from 0 to"
            } else {
                "above 0 and at most"
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_layers_give_the_default_geometry() {
        let p = NetworkParams::default();
        assert_eq!(p.geometry().expect("valid"), Geometry::DEFAULT);
        p.check(3).expect("the defaults check");
    }

    #[test]
    fn every_layer_count_to_ten_fits_its_geometry_and_the_mtu() {
        for layers in 1..=MAX_LAYERS {
            let p = NetworkParams::for_layers(layers);
            p.check(layers)
                .unwrap_or_else(|e| panic!("{layers} layers: {e}"));
            let g = p.geometry().expect("valid");
            assert_eq!(g.max_hops(), (usize::from(layers) + 3).max(6));
            assert!(access::delivery_frame_len(&g) + IP_UDP_HEADERS <= 1500);
            assert!(g.message_capacity() >= 700, "{layers} layers: {g:?}");
        }
    }

    #[test]
    fn out_of_range_fields_are_refused_by_name() {
        let base = NetworkParams::default();
        let cases: Vec<(&str, NetworkParams)> = vec![
            (
                "params.lambda_p",
                NetworkParams {
                    lambda_p: 0.0,
                    ..base
                },
            ),
            (
                "params.lambda_l",
                NetworkParams {
                    lambda_l: -1.0,
                    ..base
                },
            ),
            (
                "params.lambda_d",
                NetworkParams {
                    lambda_d: f64::NAN,
                    ..base
                },
            ),
            (
                "params.lambda_m",
                NetworkParams {
                    lambda_m: -0.0,
                    ..base
                },
            ),
            (
                "params.mean_delay_ms",
                NetworkParams {
                    mean_delay_ms: 0.0,
                    ..base
                },
            ),
            (
                "params.pull_period_ms",
                NetworkParams {
                    pull_period_ms: 0,
                    ..base
                },
            ),
            (
                "params.pull_frames",
                NetworkParams {
                    pull_frames: 0,
                    ..base
                },
            ),
            ("params.mtu", NetworkParams { mtu: 100, ..base }),
            (
                "params.max_hops",
                NetworkParams {
                    max_hops: 5,
                    ..base
                },
            ),
            (
                "params.max_hops",
                NetworkParams {
                    max_hops: 17,
                    ..base
                },
            ),
            (
                "params.payload_len",
                NetworkParams {
                    payload_len: 1500,
                    ..base
                },
            ),
            (
                "params.payload_len",
                NetworkParams {
                    payload_len: 10,
                    ..base
                },
            ),
        ];
        for (field, p) in cases {
            let err = p.check(3).expect_err(field);
            assert!(err.contains(field), "{field}: {err}");
        }
        // The geometry whose frame exceeds the declared MTU names both.
        let err = NetworkParams { mtu: 1400, ..base }
            .check(3)
            .expect_err("over the mtu");
        assert!(err.contains("over params.mtu 1400"), "{err}");
    }

    #[test]
    fn the_rates_digest_changes_with_every_rate() {
        let base = NetworkParams::default().client_rates();
        let d = base.digest();
        assert_ne!(
            d,
            ClientRates {
                lambda_p: 2.5,
                ..base
            }
            .digest()
        );
        assert_ne!(
            d,
            ClientRates {
                lambda_l: 0.0,
                ..base
            }
            .digest()
        );
        assert_ne!(
            d,
            ClientRates {
                lambda_d: 0.0,
                ..base
            }
            .digest()
        );
        assert_ne!(
            d,
            ClientRates {
                mean_delay_ms: 2.0,
                ..base
            }
            .digest()
        );
        assert_ne!(
            d,
            ClientRates {
                pull_period_ms: 999,
                ..base
            }
            .digest()
        );
        assert_eq!(d, base.digest());
    }
}
