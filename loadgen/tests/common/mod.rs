//! Test helpers over the test kit's fake provider: a small network (one
//! provider, one mix) with real Sphinx keys seeded by a number, clients'
//! registrations derived from their index, and the fake provider thread or
//! a sink that only counts datagrams. Both stop (and are joined) when
//! dropped, also when a test fails.

#![allow(dead_code)] // reason: each test file uses a different part

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use loopix_client::Registration;
use loopix_crypto::Geometry;
use loopix_loadgen::target::Target;
use loopix_testkit::fake_provider::{Access, Behaviour, FakeNet, FakeProvider, Sink, State};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// The packet geometry of the fake network.
pub const G: Geometry = loopix_testkit::fake_provider::G;

/// Frames in every pull answer.
pub const K: u16 = 4;

/// The test kit's fake network, keys from `seed`.
pub struct Net(Arc<FakeNet>);

impl Deref for Net {
    type Target = FakeNet;
    fn deref(&self) -> &FakeNet {
        &self.0
    }
}

impl Net {
    pub fn new(seed: u64) -> Net {
        Net(Arc::new(FakeNet::new(&mut ChaCha20Rng::seed_from_u64(
            seed,
        ))))
    }

    /// The signed topology document, valid now, the provider at `provider`.
    pub fn topology_toml(&self, provider: SocketAddr) -> String {
        self.0
            .topology_toml(provider, loopix_engine::keyfile::unix_now_s())
    }
}

/// Registration `i` at `addr`: slot `i`, a key and mailbox derived from `i`.
pub fn registration(net: &Net, addr: SocketAddr, i: u32) -> Registration {
    net.registration(addr, &Access::derived(i))
}

pub fn target(net: &Net, regs: Vec<Registration>) -> Target {
    Target {
        topology: Arc::clone(&net.topology),
        layers: 1,
        // The fake provider checks no rates.
        params: loopix_directory::NetworkParams {
            allow_rate_overrides: true,
            ..loopix_directory::NetworkParams::default()
        },
        registrations: regs,
        metrics: Vec::new(),
    }
}

/// A sink: counts datagrams, answers nothing.
pub fn sink() -> Sink {
    Sink::start()
}

/// The fake provider for `clients` registrations made by [`registration`].
/// Its address is known only once bound, so it returns the registrations.
pub fn provider(net: Arc<Net>, clients: u32) -> (FakeProvider, Vec<Registration>) {
    let access: Vec<Access> = (0..clients).map(Access::derived).collect();
    let behaviour = Behaviour {
        k: K,
        ..Behaviour::default()
    };
    let p = FakeProvider::start(Arc::clone(&net.0), &access, behaviour, State::default());
    let regs = access.iter().map(|a| net.registration(p.addr, a)).collect();
    (p, regs)
}
