//! `provider_pull`: a provider's pull handling on a real inbox (redb, in a
//! scratch file on tmpfs where there is one): stored messages, then a pull
//! whose body is the input, through the checks a provider's shard makes
//! (tag, parse, own mailbox), its `Answerer` (acknowledgements hidden at
//! once and handed to the writer, pending messages from the committed
//! snapshot, the sealed answer), then the writer's commit of the
//! acknowledgements.
//!
//! Input: a byte `n % 12` of messages to store, each a byte choosing the
//! mailbox (client 0's, client 1's, or an unregistered one) and the packet's
//! bytes; the rest is the pull frame's body, sealed under client 0's key.
//!
//! Checked: the answer is exactly `PULL_FRAMES` frames of one length, each
//! opening under client 0's key with the request's id, index `i` of `k`;
//! its messages are client 0's pending ones in order, none of them
//! acknowledged by this pull, and dummies after them; after the writer's
//! commit the inbox holds exactly what the answer offered and no more.

use std::path::PathBuf;
use std::sync::Arc;

use loopix_crypto::access;
use loopix_crypto::link::{FRAME_HEADER_LEN, FRAME_OVERHEAD, KIND_PULL, TAG_LEN};
use loopix_crypto::{Geometry, LinkKey, MailboxId};
use loopix_engine::metrics::ProviderMetrics;
use loopix_engine::provider::inbox::{Inbox, InboxConfig, MessageId};
use loopix_engine::provider::registry::ClientLink;
use loopix_engine::provider::{commit_round, Answerer, PullShared, Round};

use crate::fixed::{self, PULL_FRAMES};
use crate::Input;

/// Most messages stored before the pull.
const MAX_STORES: u8 = 12;

/// A scratch inbox file `name` for this process (tmpfs when there is one:
/// the inbox syncs every commit).
pub(crate) fn scratch_path(name: &str) -> PathBuf {
    let base = ["/dev/shm", "/tmp"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("loopix-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// See the module documentation.
pub fn provider_pull(data: &[u8]) {
    let g = Geometry::DEFAULT;
    let path = scratch_path("inbox.redb");
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

    answer_and_commit(&mut inbox, &client, &request);
    finish(inbox, &path);
}

/// The answerer's part, then the writer's, with their checks.
fn answer_and_commit(inbox: &mut Inbox, client: &ClientLink, request: &access::PullRequest) {
    let g = Geometry::DEFAULT;
    let k = usize::from(PULL_FRAMES);
    let hidden = |id: &MessageId| request.acks.contains(&id.0);
    let want: Vec<(MessageId, Vec<u8>)> = inbox
        .pending(request.mailbox, k + request.acks.len())
        .unwrap()
        .into_iter()
        .filter(|(id, _)| !hidden(id))
        .collect();
    let shared = PullShared::new(100);
    let (tx, rx) = crossbeam_channel::bounded(4);
    let metrics = Arc::new(ProviderMetrics::default());
    let mut answerer = Answerer::new(
        inbox.reader(),
        Arc::clone(&shared),
        tx,
        metrics,
        g,
        PULL_FRAMES,
    );
    let mut out = answerer.answer(0, client, request).to_vec();
    let dlen = access::delivery_frame_len(&g);
    assert_eq!(out.len(), dlen * k, "an answer is exactly k frames");
    let key = LinkKey::from_bytes(&fixed::access_key(0));
    let mut offered = Vec::new();
    for (i, f) in out.chunks_exact_mut(dlen).enumerate() {
        let (header, d) = access::open_delivery(&g, &key, 0, f).unwrap();
        assert_eq!(header.counter, 100 + i as u64, "a new client's counters");
        assert_eq!(d.request_id, request.request_id);
        assert_eq!((usize::from(d.index), d.k), (i, PULL_FRAMES));
        match (d.message, want.get(i)) {
            (Some((id, packet)), Some((w, bytes))) => {
                assert!(
                    !request.acks.contains(&id),
                    "acknowledged message {id} offered"
                );
                assert_eq!(id, w.0);
                assert_eq!(&packet[..], &bytes[..]);
                offered.push(id);
            }
            (None, None) => {}
            _ => panic!("frame {i}: real and pending disagree"),
        }
    }
    assert!(rx.is_empty(), "acknowledgements wait for the hand-over");
    answerer.hand_over_acks();
    let mut round = Round::default();
    while let Ok(w) = rx.try_recv() {
        round.take(w);
    }
    assert_eq!(round.acks.len(), usize::from(!request.acks.is_empty()));
    assert!(commit_round(inbox, &shared, 1, &mut round).is_empty());
    assert_eq!(
        shared.unconfirmed_len(),
        0,
        "committed acknowledgements are forgotten"
    );
    let left = inbox.pending(request.mailbox, usize::MAX).unwrap();
    assert!(
        left.iter().all(|(id, _)| !hidden(id)),
        "an acknowledged message is left"
    );
    assert_eq!(
        left.iter()
            .take(offered.len())
            .map(|(id, _)| id.0)
            .collect::<Vec<_>>(),
        offered
    );
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
