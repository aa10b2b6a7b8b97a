//! The inbox's durability promise, tested with real crashes: a provider
//! killed with SIGKILL while storing loses no packet it had counted as
//! stored, and after restart each such packet is pulled until acknowledged,
//! then never again.
//!
//! This test binary re-executes itself: `child_store_loop` does nothing
//! unless `LOOPIX_INBOX_CHILD` names an inbox file; then it stores batches
//! of 8 packets in a loop and prints the ids of each batch only after
//! `store_batch` returned (so after the fsync). The parent kills it at
//! arbitrary moments, reopens the inbox in-process and checks every printed
//! id. Bounded: each round waits at most `ROUND_TIMEOUT`, the child stops by
//! itself after `CHILD_LIFETIME`.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use loopix_engine::provider::inbox::{Inbox, InboxConfig, MailboxId, MessageId, StoreOutcome};

const CHILD_ENV: &str = "LOOPIX_INBOX_CHILD";
const SEQ_ENV: &str = "LOOPIX_INBOX_CHILD_FIRST_SEQ";
/// Starts each line of ids the child prints.
const MARKER: &str = "STORED";
const MAILBOX: MailboxId = MailboxId([0x42; 16]);
const PACKET_BYTES: usize = 1344;
const BATCH_PACKETS: usize = 8;
const ROUND_TIMEOUT: Duration = Duration::from_secs(20);
const CHILD_LIFETIME: Duration = Duration::from_secs(60);

fn config(path: &Path) -> InboxConfig {
    InboxConfig::new(path, 1_000_000, 1 << 32, 86_400)
}

fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A packet that carries its sequence number and a keystream derived from
/// it, so a reader can tell a whole packet from a damaged one.
fn packet(seq: u64) -> [u8; PACKET_BYTES] {
    let mut p = [0u8; PACKET_BYTES];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in &mut p[8..] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    p
}

fn seq_of_checked(bytes: &[u8]) -> u64 {
    assert_eq!(
        bytes.len(),
        PACKET_BYTES,
        "stored packet has the wrong length"
    );
    let seq = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    assert!(bytes == packet(seq), "packet {seq} came back damaged");
    seq
}

/// The child: store batches until killed (or `CHILD_LIFETIME`), printing
/// `STORED <id> <id> ...` after each durable commit.
#[test]
fn child_store_loop() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return; // not the child: nothing to do
    };
    let mut seq: u64 = std::env::var(SEQ_ENV)
        .expect("parent sets the first sequence number")
        .parse()
        .expect("sequence number is a u64");
    let mut inbox = Inbox::open(config(Path::new(&path))).expect("child opens the inbox");
    inbox.register(MAILBOX).expect("child registers");
    let mut out = std::io::stdout().lock();
    let end = Instant::now() + CHILD_LIFETIME;
    while Instant::now() < end {
        let packets: Vec<[u8; PACKET_BYTES]> = (0..BATCH_PACKETS)
            .map(|_| {
                seq += 1;
                packet(seq)
            })
            .collect();
        let items: Vec<(MailboxId, &[u8])> = packets.iter().map(|p| (MAILBOX, &p[..])).collect();
        let outcomes = inbox
            .store_batch(unix_now_s(), &items)
            .expect("child stores a batch");
        let mut line = String::from(MARKER);
        for o in outcomes {
            match o {
                StoreOutcome::Stored(MessageId(id)) => line.push_str(&format!(" {id}")),
                other => panic!("child: packet not stored: {other:?}"),
            }
        }
        line.push('\n');
        // One write of a short line: the parent sees all of it or none.
        if out
            .write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return; // parent gone
        }
    }
}

/// Ids on a complete `STORED ...` line (a line cut short by the kill has no
/// newline and is ignored: the parent only trusts what it fully read). The
/// marker may follow libtest's own `test child_store_loop ... ` on the line.
fn parse_line(line: &str, into: &mut Vec<u64>) {
    let Some(rest) = line.strip_suffix('\n') else {
        return;
    };
    let Some((_, ids)) = rest.split_once(MARKER) else {
        return; // libtest's own output
    };
    into.extend(
        ids.split_whitespace()
            .map(|t| t.parse::<u64>().expect("child prints decimal ids")),
    );
}

struct Round {
    /// Kill once at least this many ids were printed.
    kill_after_ids: usize,
    /// Then wait this long, to land the kill at a different moment.
    extra_delay: Duration,
}

/// Run the child until it printed `round.kill_after_ids` ids, SIGKILL it,
/// and return every id it printed on a complete line.
fn run_child_and_kill(path: &Path, first_seq: u64, round: &Round) -> Vec<u64> {
    let mut child = Command::new(std::env::current_exe().expect("own test binary"))
        .args([
            "--exact",
            "child_store_loop",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .env(SEQ_ENV, first_seq.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("child stdout is piped");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let deadline = Instant::now() + ROUND_TIMEOUT;
    let mut printed = Vec::new();
    while printed.len() < round.kill_after_ids {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => parse_line(&line, &mut printed),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "child printed {} of {} ids before {e:?} (its stderr is above)",
                    printed.len(),
                    round.kill_after_ids
                );
            }
        }
    }
    std::thread::sleep(round.extra_delay);
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert_eq!(
        status.signal(),
        Some(9),
        "child died of SIGKILL: {status:?}"
    );
    reader.join().expect("reader thread");
    // Lines the child wrote before it died are still in the pipe.
    for line in rx.try_iter() {
        parse_line(&line, &mut printed);
    }
    printed
}

#[test]
fn sigkill_while_storing_loses_nothing_counted_as_stored() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("inbox.redb");
    let rounds = [
        Round {
            kill_after_ids: 50,
            extra_delay: Duration::ZERO,
        },
        // Killed early: while opening (repairing after the last kill) or
        // in its first batches.
        Round {
            kill_after_ids: 0,
            extra_delay: Duration::from_millis(1),
        },
        Round {
            kill_after_ids: 150,
            extra_delay: Duration::from_micros(700),
        },
        Round {
            kill_after_ids: 300,
            extra_delay: Duration::from_micros(2300),
        },
    ];
    let mut acked: HashSet<u64> = HashSet::new();
    let mut total_printed = 0usize;
    for (i, round) in rounds.iter().enumerate() {
        let first_seq = (i as u64 + 1) * 1_000_000_000;
        let printed = run_child_and_kill(&path, first_seq, round);
        total_printed += printed.len();

        let mut inbox = Inbox::open(config(&path)).expect("reopen after SIGKILL");
        let pending = inbox.pending(MAILBOX, 2_000_000).expect("pending");
        let pending_ids: Vec<u64> = pending.iter().map(|(id, _)| id.0).collect();
        let as_set: BTreeSet<u64> = pending_ids.iter().copied().collect();
        assert_eq!(as_set.len(), pending_ids.len(), "an id is pending twice");
        // Ids are a keyed permutation: the packets' own sequence numbers say
        // the order.
        let mut seqs = HashSet::new();
        let mut last_seq = None;
        for (_, bytes) in &pending {
            let seq = seq_of_checked(bytes);
            assert!(seqs.insert(seq), "packet {seq} stored twice");
            assert!(last_seq < Some(seq), "pending is oldest first");
            last_seq = Some(seq);
        }
        for id in &printed {
            assert!(
                as_set.contains(id),
                "round {i}: id {id} was counted as stored but is gone after SIGKILL"
            );
            assert!(!acked.contains(id), "round {i}: id {id} reused");
        }
        for id in &pending_ids {
            assert!(
                !acked.contains(id),
                "round {i}: acknowledged id {id} came back"
            );
        }
        // Ids committed but killed before printing may be there too; that is
        // allowed (the child never counted them).
        let ids: Vec<MessageId> = pending.iter().map(|(id, _)| *id).collect();
        assert_eq!(inbox.ack(MAILBOX, &ids).expect("ack"), ids.len());
        assert!(inbox.pending(MAILBOX, 10).expect("pending").is_empty());
        assert_eq!(inbox.usage(MAILBOX).expect("usage"), (0, 0));
        acked.extend(pending_ids);
        eprintln!(
            "round {i}: {} ids printed, {} pending after the kill, all acked",
            printed.len(),
            ids.len()
        );
    }
    assert!(total_printed >= 500, "{total_printed} ids printed in all");

    // Pulled exactly once: nothing comes back after another reopen.
    let inbox = Inbox::open(config(&path)).expect("final reopen");
    assert!(inbox.pending(MAILBOX, 10).expect("pending").is_empty());
    assert_eq!(inbox.usage(MAILBOX).expect("usage"), (0, 0));
    let s = inbox.stats();
    assert_eq!((s.held_messages, s.held_bytes), (0, 0));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
