//! A whole table on request: what IPVS lacks when a director starts or returns. Its backup
//! asks the group for every peer's table ([`Control::TableRequest`]); each peer's master sends
//! its live connections as ordinary sync messages, then says how many it sent
//! ([`Control::TableSent`]); the asking director holds its peers' tables once the entries it
//! received match, and says so (`xvsadm synced`), so keepalived can hold the VIP back until
//! then instead of resetting every connection the peer took over meanwhile.
//!
//! The two control messages travel on the sync group and port in a version 1 header that IPVS
//! ignores: `nr_conns` 0 and a non-zero `spare` ([`CONTROL_MAGIC`]), which a kernel backup
//! reads as a version 0 message of no entries. The payload after the header is xvs's:
//! kind (1 byte), 3 bytes of zeros, the request's nonce and an entry count (big-endian u32s).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::wire::{HEADER_LEN, PROTO_VERSION};

/// The `spare` field of xvs's control messages ("XV").
pub const CONTROL_MAGIC: u16 = 0x5856;
/// A control message's length: the header and 12 bytes.
pub const CONTROL_LEN: usize = HEADER_LEN + 12;

const KIND_REQUEST: u8 = 1;
const KIND_SENT: u8 = 2;

/// A control message between xvs directors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// A director asks every peer for its whole table.
    TableRequest {
        /// Names the request; answers repeat it.
        nonce: u32,
    },
    /// A peer sent its whole table for request `nonce`: `entries` entries.
    TableSent {
        /// The request answered.
        nonce: u32,
        /// Entries sent (connections and templates).
        entries: u32,
    },
}

/// The datagram of a control message for `syncid`.
pub fn encode_control(syncid: u8, control: &Control) -> Vec<u8> {
    let (kind, nonce, entries) = match *control {
        Control::TableRequest { nonce } => (KIND_REQUEST, nonce, 0),
        Control::TableSent { nonce, entries } => (KIND_SENT, nonce, entries),
    };
    let mut out = Vec::with_capacity(CONTROL_LEN);
    out.extend_from_slice(&[0, syncid]);
    out.extend_from_slice(&(CONTROL_LEN as u16).to_be_bytes());
    out.extend_from_slice(&[0, PROTO_VERSION]);
    out.extend_from_slice(&CONTROL_MAGIC.to_be_bytes());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&nonce.to_be_bytes());
    out.extend_from_slice(&entries.to_be_bytes());
    out
}

/// A control message and its syncid, or None when the datagram is not one (anything else is
/// for [`super::decode`]).
pub fn decode_control(buf: &[u8]) -> Option<(u8, Control)> {
    if buf.len() != CONTROL_LEN
        || buf[0] != 0
        || u16::from_be_bytes([buf[2], buf[3]]) as usize != CONTROL_LEN
        || buf[4] != 0
        || buf[5] != PROTO_VERSION
        || u16::from_be_bytes([buf[6], buf[7]]) != CONTROL_MAGIC
        || buf[9..12] != [0, 0, 0]
    {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let control = match buf[8] {
        KIND_REQUEST => Control::TableRequest { nonce: word(12) },
        KIND_SENT => Control::TableSent {
            nonce: word(12),
            entries: word(16),
        },
        _ => return None,
    };
    Some((buf[1], control))
}

/// A request is sent again this long after the previous one while no peer answered it, or
/// while a peer's answer came short.
pub const REQUEST_RETRY: Duration = Duration::from_secs(1);
/// Requests sent for one wait at most.
pub const REQUEST_TRIES: u32 = 3;
/// After the first peer's answer, how long other peers' answers are waited for.
pub const ANSWER_GRACE: Duration = Duration::from_millis(500);

/// What one peer answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Answer {
    /// Entries it said it sent (None until its TableSent arrives).
    sent: Option<u32>,
    /// Entries received from it since the request.
    received: u64,
}

/// A director's wait for its peers' tables.
#[derive(Clone, Debug)]
pub struct TableWait {
    nonce: u32,
    since: Instant,
    tries: u32,
    last_sent: Instant,
    peers: BTreeMap<IpAddr, Answer>,
    first_answer: Option<Instant>,
}

/// Whether this director holds its peers' tables (`xvsadm synced`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TableStatus {
    /// No backup sync daemon runs: nothing is received.
    NoBackup,
    /// A request is out; its answers are not all in.
    Waiting {
        /// Since the request, ms.
        for_ms: u64,
        /// Requests sent.
        tries: u32,
    },
    /// The peers that answered sent their tables and every entry they announced arrived (or
    /// the tries ran out with some missing: `missing`).
    Held {
        /// Peers that answered, with the entries each announced.
        peers: BTreeMap<IpAddr, u32>,
        /// Entries they announced and did not arrive.
        missing: u64,
        /// From the request to the last answer, ms.
        after_ms: u64,
    },
    /// No peer answered any request: nothing to wait for.
    Alone {
        /// Requests sent.
        tries: u32,
    },
}

impl TableStatus {
    /// Whether a director may take traffic: it holds its peers' tables, or has none to wait
    /// for (`xvsadm synced` exits 0).
    pub fn ready(&self) -> bool {
        matches!(self, TableStatus::Held { .. } | TableStatus::Alone { .. })
    }

    /// One line for an operator.
    pub fn describe(&self) -> String {
        match self {
            TableStatus::NoBackup => {
                "no backup sync daemon runs: this director receives no table".to_string()
            }
            TableStatus::Waiting { for_ms, tries } => format!(
                "waiting for the peers' tables: asked {} ms ago ({tries} request{})",
                for_ms,
                if *tries == 1 { "" } else { "s" }
            ),
            TableStatus::Held {
                peers,
                missing,
                after_ms,
            } => {
                let from: Vec<String> = peers.iter().map(|(p, n)| format!("{p} ({n})")).collect();
                let mut line = format!(
                    "held: the tables of {} peer{} in {after_ms} ms: {}",
                    peers.len(),
                    if peers.len() == 1 { "" } else { "s" },
                    from.join(", ")
                );
                if *missing > 0 {
                    line.push_str(&format!("; {missing} entries announced did not arrive"));
                }
                line
            }
            TableStatus::Alone { tries } => format!(
                "alone: no peer answered {tries} requests for its table; nothing to wait for"
            ),
        }
    }
}

impl TableWait {
    /// A wait whose first request (`nonce`) goes out now.
    pub fn start(nonce: u32, now: Instant) -> Self {
        Self {
            nonce,
            since: now,
            tries: 1,
            last_sent: now,
            peers: BTreeMap::new(),
            first_answer: None,
        }
    }

    /// The nonce requests carry.
    pub fn nonce(&self) -> u32 {
        self.nonce
    }

    /// Counts `n` entries received from `peer` (any sync message, since they may answer).
    pub fn received(&mut self, peer: IpAddr, n: u64) {
        self.peers.entry(peer).or_default().received += n;
    }

    /// A peer's TableSent; false when it answers another request.
    pub fn answered(&mut self, peer: IpAddr, nonce: u32, entries: u32, now: Instant) -> bool {
        if nonce != self.nonce {
            return false;
        }
        self.peers.entry(peer).or_default().sent = Some(entries);
        self.first_answer.get_or_insert(now);
        true
    }

    /// Entries announced by answering peers and not received.
    fn missing(&self) -> u64 {
        self.peers
            .values()
            .filter_map(|a| a.sent.map(|s| u64::from(s).saturating_sub(a.received)))
            .sum()
    }

    /// Whether the request should go out again now: no answer yet, or one came short, a
    /// retry period after the previous request, tries left.
    pub fn resend_due(&self, now: Instant) -> bool {
        let unanswered = self.first_answer.is_none();
        let short =
            self.first_answer.is_some_and(|t| now >= t + ANSWER_GRACE) && self.missing() > 0;
        (unanswered || short)
            && self.tries < REQUEST_TRIES
            && now.saturating_duration_since(self.last_sent) >= REQUEST_RETRY
    }

    /// The request went out again (same nonce: answers to any of its copies count). A short
    /// answer's peer starts counting afresh, since it sends its whole table again.
    pub fn resent(&mut self, now: Instant) {
        self.tries += 1;
        self.last_sent = now;
        if self.missing() > 0 {
            self.peers.clear();
            self.first_answer = None;
        }
    }

    /// Where the wait stands.
    pub fn status(&self, now: Instant) -> TableStatus {
        let ms = |d: Duration| d.as_millis() as u64;
        match self.first_answer {
            Some(first) if now >= first + ANSWER_GRACE => {
                let missing = self.missing();
                if missing > 0 && self.tries < REQUEST_TRIES {
                    return TableStatus::Waiting {
                        for_ms: ms(now.saturating_duration_since(self.since)),
                        tries: self.tries,
                    };
                }
                TableStatus::Held {
                    peers: self
                        .peers
                        .iter()
                        .filter_map(|(p, a)| Some((*p, a.sent?)))
                        .collect(),
                    missing,
                    after_ms: ms(first.saturating_duration_since(self.since)),
                }
            }
            None if self.tries >= REQUEST_TRIES && now >= self.last_sent + REQUEST_RETRY => {
                TableStatus::Alone { tries: self.tries }
            }
            _ => TableStatus::Waiting {
                for_ms: ms(now.saturating_duration_since(self.since)),
                tries: self.tries,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 3));

    #[test]
    fn control_messages_round_trip_and_ipvs_reads_them_as_empty() {
        for c in [
            Control::TableRequest { nonce: 0xdead_beef },
            Control::TableSent {
                nonce: 7,
                entries: 123_456,
            },
        ] {
            let bytes = encode_control(9, &c);
            assert_eq!(bytes.len(), CONTROL_LEN);
            assert_eq!(decode_control(&bytes), Some((9, c)));
            // A kernel backup: size right, version 1 but spare set, so the version 0 path,
            // whose first byte (nr_conns) is 0: no entry. Our own decoder refuses it as a
            // version 1 message.
            assert_eq!(bytes[0], 0);
            assert!(super::super::decode(&bytes).is_err());
        }
        // Ordinary messages and garbage are not control messages.
        let msg = super::super::encode(9, &[], 1472).unwrap();
        for m in &msg {
            assert_eq!(decode_control(m), None);
        }
        let mut bad = encode_control(9, &Control::TableRequest { nonce: 1 });
        bad[8] = 3;
        assert_eq!(decode_control(&bad), None);
        assert_eq!(decode_control(&bad[..10]), None);
    }

    #[test]
    fn held_once_the_answers_are_in_and_complete() {
        let t0 = Instant::now();
        let mut w = TableWait::start(5, t0);
        assert!(matches!(
            w.status(t0),
            TableStatus::Waiting { tries: 1, .. }
        ));
        w.received(A, 40);
        assert!(!w.answered(A, 4, 40, t0), "another request's answer");
        assert!(w.answered(A, 5, 40, t0 + Duration::from_millis(200)));
        // Within the grace other peers may still answer.
        assert!(!w.status(t0 + Duration::from_millis(300)).ready());
        w.received(B, 2);
        w.answered(B, 5, 2, t0 + Duration::from_millis(400));
        let s = w.status(t0 + Duration::from_millis(700));
        assert_eq!(
            s,
            TableStatus::Held {
                peers: BTreeMap::from([(A, 40), (B, 2)]),
                missing: 0,
                after_ms: 200
            }
        );
        assert!(s.ready() && s.describe().starts_with("held: the tables of 2 peers"));
        assert!(!w.resend_due(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_short_answer_is_asked_again_then_held_with_what_is_missing() {
        let t0 = Instant::now();
        let mut w = TableWait::start(5, t0);
        w.received(A, 30);
        w.answered(A, 5, 40, t0 + Duration::from_millis(100));
        let t1 = t0 + Duration::from_millis(1100);
        assert!(!w.status(t1).ready(), "10 entries lost: not held");
        assert!(w.resend_due(t1));
        w.resent(t1);
        w.received(A, 40);
        w.answered(A, 5, 40, t1 + Duration::from_millis(50));
        assert!(w.status(t1 + Duration::from_millis(600)).ready());
        // Lost again on every try: held in the end, saying what is missing.
        let mut w = TableWait::start(6, t0);
        for k in 0..REQUEST_TRIES {
            let t = t0 + REQUEST_RETRY * k;
            if k > 0 {
                assert!(w.resend_due(t), "try {k}");
                w.resent(t);
            }
            w.received(A, 1);
            w.answered(A, 6, 2, t);
        }
        let end = t0 + REQUEST_RETRY * REQUEST_TRIES;
        assert!(!w.resend_due(end));
        match w.status(end) {
            TableStatus::Held { missing: 1, .. } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_answer_is_asked_again_then_alone() {
        let t0 = Instant::now();
        let mut w = TableWait::start(1, t0);
        assert!(!w.resend_due(t0 + Duration::from_millis(500)));
        for k in 1..REQUEST_TRIES {
            let t = t0 + REQUEST_RETRY * k;
            assert!(w.resend_due(t));
            w.resent(t);
            assert!(!w.status(t).ready());
        }
        let last = t0 + REQUEST_RETRY * (REQUEST_TRIES - 1);
        assert!(!w.resend_due(last + REQUEST_RETRY), "tries used up");
        assert!(!w.status(last + REQUEST_RETRY / 2).ready());
        let s = w.status(last + REQUEST_RETRY);
        assert_eq!(
            s,
            TableStatus::Alone {
                tries: REQUEST_TRIES
            }
        );
        assert!(s.ready());
        assert!(!TableStatus::NoBackup.ready());
    }
}
