//! What a provider hands a client when it registers it, and the public
//! address a client gives to those who write to it. Both are small TOML
//! files: `loopix provider register` prints the first, `loopix client init`
//! reads it and writes the second.
//!
//! The registration holds the client's access key (the secret that
//! authenticates its frames to its provider): keep it mode 0600. It also
//! names the operator key the provider trusts, so that the client checks
//! the topology document against the same operator.

use std::net::SocketAddr;

use loopix_crypto::identity::IdentityPublic;
use loopix_crypto::{MailboxId, NodeId, PublicKey};
use serde::{Deserialize, Serialize};

/// Where messages for a client go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    /// The client's provider.
    pub provider: NodeId,
    /// Its mailbox there.
    pub mailbox: MailboxId,
    /// Its Sphinx public key (the last layer of every packet to it).
    pub key: PublicKey,
}

/// A client's registration at its provider, as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationFile {
    /// The provider's node id (hex, 16 bytes).
    pub provider_id: String,
    /// The provider's UDP address.
    pub provider_address: SocketAddr,
    /// The client's slot: the sender index of its frames.
    pub slot: u32,
    /// The client's mailbox (hex, 16 bytes).
    pub mailbox: String,
    /// The access key shared with the provider (hex, 16 bytes). Secret.
    pub access_key: String,
    /// The operator key that signs the topology (hex Ed25519 public key).
    pub operator_key: String,
}

/// A checked registration.
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    /// Provider id.
    pub provider_id: NodeId,
    /// Provider address.
    pub provider_address: SocketAddr,
    /// Slot.
    pub slot: u32,
    /// Mailbox.
    pub mailbox: MailboxId,
    /// Access key.
    pub access_key: [u8; 16],
    /// The operator whose topology documents to trust.
    pub operator_key: IdentityPublic,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("provider_id", &self.provider_id)
            .field("provider_address", &self.provider_address)
            .field("slot", &self.slot)
            .field("mailbox", &self.mailbox)
            .field("operator_key", &self.operator_key)
            .finish_non_exhaustive()
    }
}

/// A public address: where and how to reach a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressFile {
    /// The client's provider (hex node id).
    pub provider: String,
    /// The client's mailbox (hex).
    pub mailbox: String,
    /// The client's Sphinx public key (hex, 32 bytes).
    pub key: String,
}

fn hex_array<const N: usize>(field: &str, text: &str) -> Result<[u8; N], String> {
    let v = hex::decode(text.trim())
        .map_err(|e| format!("{field}: not hex ({e}); expected {} hex digits", 2 * N))?;
    let n = v.len();
    v.try_into()
        .map_err(|_| format!("{field}: {n} bytes, expected {N}"))
}

impl Registration {
    /// Parse and check a registration file's text.
    pub fn parse(text: &str) -> Result<Registration, String> {
        let f: RegistrationFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Registration::from_file(&f)
    }

    /// Check a parsed file.
    pub fn from_file(f: &RegistrationFile) -> Result<Registration, String> {
        if f.slot > loopix_crypto::access::MAX_SLOT {
            return Err(format!("slot: {} is reserved", f.slot));
        }
        Ok(Registration {
            provider_id: NodeId(hex_array("provider_id", &f.provider_id)?),
            provider_address: f.provider_address,
            slot: f.slot,
            mailbox: MailboxId(hex_array("mailbox", &f.mailbox)?),
            access_key: hex_array("access_key", &f.access_key)?,
            operator_key: IdentityPublic::from_hex(&f.operator_key)
                .map_err(|e| format!("operator_key: {e}"))?,
        })
    }

    /// The file form.
    pub fn to_file(&self) -> RegistrationFile {
        RegistrationFile {
            provider_id: self.provider_id.to_string(),
            provider_address: self.provider_address,
            slot: self.slot,
            mailbox: self.mailbox.to_string(),
            access_key: hex::encode(self.access_key),
            operator_key: self.operator_key.to_hex(),
        }
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.to_file()).expect("a registration always serializes")
    }
}

impl Address {
    /// Parse and check an address file's text.
    pub fn parse(text: &str) -> Result<Address, String> {
        let f: AddressFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Ok(Address {
            provider: NodeId(hex_array("provider", &f.provider)?),
            mailbox: MailboxId(hex_array("mailbox", &f.mailbox)?),
            key: PublicKey::from_bytes(hex_array("key", &f.key)?),
        })
    }

    /// The file's text, ending with a comment that gives the address as an
    /// id (see [`Address::to_id`]).
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(&AddressFile {
            provider: self.provider.to_string(),
            mailbox: self.mailbox.to_string(),
            key: hex::encode(self.key.as_bytes()),
        })
        .expect("an address always serializes");
        format!("{body}# as an id: {}\n", self.to_id())
    }

    /// The address on one line: `PROVIDER.MAILBOX.KEY` in hex (32, 32 and
    /// 64 digits), for `loopix client send --to` without a file.
    pub fn to_id(&self) -> String {
        format!(
            "{}.{}.{}",
            self.provider,
            self.mailbox,
            hex::encode(self.key.as_bytes())
        )
    }

    /// Parse the one-line form of [`Address::to_id`].
    pub fn parse_id(text: &str) -> Result<Address, String> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [provider, mailbox, key] = parts[..] else {
            return Err("an address id is PROVIDER.MAILBOX.KEY (three hex parts)".into());
        };
        Ok(Address {
            provider: NodeId(hex_array("provider", provider)?),
            mailbox: MailboxId(hex_array("mailbox", mailbox)?),
            key: PublicKey::from_bytes(hex_array("key", key)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_errors_name_the_field() {
        let r = Registration {
            provider_id: NodeId([1; 16]),
            provider_address: "127.0.0.1:9000".parse().expect("addr"),
            slot: 4,
            mailbox: MailboxId([2; 16]),
            access_key: [3; 16],
            operator_key: loopix_crypto::identity::IdentityKey::from_seed([5; 32])
                .expect("any seed")
                .public(),
        };
        assert_eq!(Registration::parse(&r.to_toml()).expect("parses"), r);
        let bad = r.to_toml().replace(&"02".repeat(16), "02");
        let e = Registration::parse(&bad).expect_err("short mailbox");
        assert!(e.contains("mailbox"), "{e}");
        assert!(!format!("{r:?}").contains("0303"), "debug hides the key");
        let a = Address {
            provider: NodeId([1; 16]),
            mailbox: MailboxId([2; 16]),
            key: PublicKey::from_bytes([9; 32]),
        };
        assert_eq!(Address::parse(&a.to_toml()).expect("parses"), a);
        assert_eq!(Address::parse_id(&a.to_id()).expect("parses"), a);
        assert!(a.to_toml().contains(&a.to_id()));
        let e = Address::parse_id("ab.cd").expect_err("two parts");
        assert!(e.contains("PROVIDER.MAILBOX.KEY"), "{e}");
        let e = Address::parse_id(&a.to_id().replace('.', ".zz")).expect_err("bad hex");
        assert!(e.contains("mailbox"), "{e}");
        let e =
            Address::parse("provider = \"zz\"\nmailbox = \"\"\nkey = \"\"").expect_err("bad hex");
        assert!(e.contains("provider"), "{e}");
    }
}
