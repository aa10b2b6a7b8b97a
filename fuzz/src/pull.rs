//! `provider_pull`: a provider's pull handling on a real inbox (redb, in a
//! scratch file on tmpfs where there is one): stored messages, then a pull
//! whose body is the input, through the checks a provider's shard makes
//! (tag, parse, own mailbox) and the inbox thread's work (acknowledgements
//! in one transaction, pending messages, the sealed answer).
//!
//! Input: a byte `n % 12` of messages to store, each a byte choosing the
//! mailbox (client 0's, client 1's, or an unregistered one) and the packet's
//! bytes; the rest is the pull frame's body, sealed under client 0's key.
//!
//! Checked: the answer is exactly `PULL_FRAMES` frames of one length, each
//! opening under client 0's key with the request's id, index `i` of `k`;
//! its messages are client 0's pending ones in order, none of them
//! acknowledged by this pull, and dummies after them.

use std::path::PathBuf;

use loopix_crypto::access;
use loopix_crypto::link::{FRAME_HEADER_LEN, FRAME_OVERHEAD, KIND_PULL, TAG_LEN};
use loopix_crypto::{Geometry, LinkKey, MailboxId};
use loopix_engine::provider::inbox::{Inbox, InboxConfig, MessageId};
use loopix_engine::provider::seal_answer;

use crate::fixed::{self, PULL_FRAMES};
use crate::Input;

/// Most messages stored before the pull.
const MAX_STORES: u8 = 12;

/// A scratch inbox file for this process (tmpfs when there is one: the
/// inbox syncs every commit).
fn scratch_path() -> PathBuf {
    let base = ["/dev/shm", "/tmp"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("loopix-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("inbox.redb")
}

/// See the module documentation.
pub fn provider_pull(data: &[u8]) {
    let g = Geometry::DEFAULT;
    let path = scratch_path();
    let _ = std::fs::remove_file(&path);
    let mut inbox = Inbox::open(InboxConfig::new(&path, 8, 1 << 20, 3600)).unwrap();
    inbox.register(fixed::mailbox(0)).unwrap();
    inbox.register(fixed::mailbox(1)).unwrap();

    let mut input = Input::new(data);
    let n = input.byte() % MAX_STORES;
    let mut stores = Vec::new();
    for _ in 0..n {
        let which = u32::from(input.byte() % 3);
        let packet = input.padded(g.packet_len());
        stores.push((fixed::mailbox(which), packet));
    }
    let items: Vec<(MailboxId, &[u8])> = stores.iter().map(|(m, p)| (*m, p.as_slice())).collect();
    inbox.store_batch(1, &items).unwrap();

    // The shard's part: tag, parse, own mailbox.
    let client = fixed::client_link(0);
    let mut frame = vec![0u8; g.frame_len()];
    let body = input.padded(g.frame_len() - FRAME_OVERHEAD);
    frame[FRAME_HEADER_LEN..g.frame_len() - TAG_LEN].copy_from_slice(&body);
    client.link.seal_kind(KIND_PULL, 0, 1, &mut frame).unwrap();
    let (_, opened) = client.link.open_in_place(&mut frame).unwrap();
    let Ok(request) = access::PullRequest::parse(opened) else {
        finish(inbox, &path);
        return;
    };
    if request.mailbox != client.mailbox {
        finish(inbox, &path);
        return;
    }

    // The inbox thread's part.
    let acks: Vec<MessageId> = request.acks.iter().map(|&id| MessageId(id)).collect();
    inbox.ack_batch(&[(request.mailbox, &acks)]).unwrap();
    let pending = inbox
        .pending(request.mailbox, usize::from(PULL_FRAMES))
        .unwrap();
    for (id, _) in &pending {
        assert!(
            !request.acks.contains(&id.0),
            "acknowledged message {} offered",
            id.0
        );
    }
    let mut out = Vec::new();
    let sealed = seal_answer(
        &g,
        &client,
        0,
        100,
        request.request_id,
        PULL_FRAMES,
        &pending,
        &mut out,
    );
    assert_eq!(sealed.frames, PULL_FRAMES, "an answer is exactly k frames");
    assert_eq!(
        usize::from(sealed.real),
        pending.len().min(usize::from(PULL_FRAMES))
    );
    let dlen = access::delivery_frame_len(&g);
    assert_eq!(out.len(), dlen * usize::from(PULL_FRAMES));
    let key = LinkKey::from_bytes(&fixed::access_key(0));
    for (i, f) in out.chunks_exact_mut(dlen).enumerate() {
        let (_, d) = access::open_delivery(&g, &key, 0, f).unwrap();
        assert_eq!(d.request_id, request.request_id);
        assert_eq!((usize::from(d.index), d.k), (i, PULL_FRAMES));
        match (d.message, pending.get(i)) {
            (Some((id, packet)), Some((want, bytes))) => {
                assert_eq!(id, want.0);
                assert_eq!(&packet[..], &bytes[..]);
            }
            (None, None) => {}
            _ => panic!("frame {i}: real and pending disagree"),
        }
    }
    finish(inbox, &path);
}

/// Close the inbox and remove its file and scratch directory (the next
/// input makes them again), so nothing is left behind.
fn finish(inbox: Inbox, path: &PathBuf) {
    drop(inbox);
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}
