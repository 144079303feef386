//! Version 1 sync messages as bytes: [`MessageBuilder`] packs entries the way
//! net/netfilter/ipvs/ip_vs_sync.c's `ip_vs_sync_conn` does, [`decode`] reads them the way its
//! `ip_vs_process_message` does, refusing what the kernel refuses.
//!
//! Layout (all multi-byte fields big-endian):
//! ```text
//! struct ip_vs_sync_mesg   (8)  reserved=0 u8, syncid u8, size u16 (whole message),
//!                               nr_conns u8, version=1 u8, spare=0 u16
//! struct ip_vs_sync_v4    (36)  type=0 u8, protocol u8, ver_size u16 (version<<12 | size),
//!                               flags u32, state u16, cport u16, vport u16, dport u16,
//!                               fwmark u32, timeout u32 (seconds), caddr, vaddr, daddr (4 each)
//! struct ip_vs_sync_v6    (72)  the same with type=1 (STYPE_F_INET6) and 16-byte addresses
//! options                       type u8, length u8 (data only, never 0), data; in this order:
//!                               SEQ_DATA (24: in_seq, out_seq as 3 x u32 each), PE_DATA, PE_NAME
//! ```
//! An entry's `size` counts its options but not the padding: the sender puts 0 to 3 zero
//! bytes *before* the next entry so that it starts 4-byte aligned, and none after the last;
//! the message's `size` counts that padding.

use thiserror::Error;

use super::conn::{
    Addrs, ConnFlags, ConnState, PeData, Ports, SeqAdjust, SeqOptions, SyncConn, PE_DATA_MAX,
    PE_NAME_MAX,
};

/// `SYNC_PROTO_VER`: the version byte of the messages this module speaks.
pub const PROTO_VERSION: u8 = 1;
/// `sizeof(struct ip_vs_sync_mesg)`.
pub const HEADER_LEN: usize = 8;
/// `sizeof(struct ip_vs_sync_v4)`.
pub const V4_ENTRY_LEN: usize = 36;
/// `sizeof(struct ip_vs_sync_v6)`.
pub const V6_ENTRY_LEN: usize = 72;
/// `sizeof(struct ip_vs_sync_conn_options)`: the `SEQ_DATA` option's data.
pub const SEQ_DATA_LEN: usize = 24;
/// Most entries one message can count (`nr_conns` is one byte).
pub const MAX_CONNS: usize = u8::MAX as usize;

/// `STYPE_F_INET6`: the entry-type bit of IPv6 entries.
const STYPE_F_INET6: u8 = 1;
/// `SVER_SHIFT` / `SVER_MASK`: `ver_size` is the entry's version over its 12-bit size.
const SVER_SHIFT: u16 = 12;
const SVER_MASK: u16 = 0x0fff;
/// Option types (`IPVS_OPT_*`).
const OPT_SEQ_DATA: u8 = 1;
const OPT_PE_DATA: u8 = 2;
const OPT_PE_NAME: u8 = 3;
/// `IPVS_OPT_F_PARAM`: an option with this bit may be ignored by receivers that do not know
/// it; an unknown option without it makes the receiver drop the entry.
const OPT_F_PARAM: u8 = 1 << 6;
/// xvs's own option: a FULLNAT connection's local address and port (4 or 16 address bytes, as
/// the entry's family, then the port). Always sent with [`OPT_F_PARAM`] (the byte 0x58, 'X'),
/// which a kernel IPVS skips; its number, 0x18, is none of the kernel's.
const OPT_XVS_LOCAL: u8 = 0x18;

/// Why bytes are not a version 1 message at all (the receiver drops all of it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// Shorter than a header.
    #[error("sync message of {len} bytes is shorter than its header")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// The header's size is not the datagram's length (the kernel's "bogus message size").
    #[error("sync message header says {header} bytes, datagram has {actual}")]
    BadSize {
        /// The header's size field.
        header: u16,
        /// Bytes received.
        actual: usize,
    },
    /// A version 0 message (its first byte, the connection count, is not 0): recognised and
    /// refused, since version 0 carries neither IPv6, timeouts nor fwmarks.
    #[error("version 0 sync message (syncid {syncid}, {nr_conns} connections) is not supported")]
    Version0 {
        /// Its SyncID.
        syncid: u8,
        /// Its connection count.
        nr_conns: u8,
    },
    /// Reserved byte 0 but a version other than 1 or non-zero spare bytes; the kernel would
    /// read it as an empty version 0 message.
    #[error("sync message version {version} (spare {spare:#06x}) is not version 1")]
    UnknownVersion {
        /// The version byte.
        version: u8,
        /// The spare field.
        spare: u16,
    },
    /// An entry ended the message ([`decode_strict`] only; [`decode`] keeps the entries
    /// before it, as the kernel does).
    #[error("sync entry {index}: {fault}")]
    BadEntry {
        /// The entry's position in the message, from 0.
        index: usize,
        /// What was wrong.
        fault: EntryFault,
    },
}

/// Why an entry ends the parsing of its message (the kernel drops it and every entry after).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EntryFault {
    /// Fewer bytes left than the smallest entry.
    #[error("{left} bytes left, an entry needs at least {V4_ENTRY_LEN}")]
    Truncated {
        /// Bytes left in the message.
        left: usize,
    },
    /// The entry's size runs past the message.
    #[error("entry size {size} runs past the message ({left} bytes left)")]
    Overrun {
        /// The entry's size field.
        size: usize,
        /// Bytes left in the message.
        left: usize,
    },
    /// The version nibble of `ver_size` is not 0.
    #[error("entry version {0} is not 0")]
    BadVersion(u8),
    /// A type other than 0 (IPv4) without the IPv6 bit.
    #[error("entry type {0} is neither IPv4 nor IPv6")]
    BadType(u8),
    /// The entry's size is smaller than its fixed part.
    #[error("entry size {size} is smaller than its {needed}-byte fixed part")]
    TooShort {
        /// The entry's size field.
        size: usize,
        /// The fixed part's length.
        needed: usize,
    },
    /// An option's type and length bytes, or its data, run past the entry.
    #[error("option of type {kind} runs past its entry")]
    OptionOverrun {
        /// The option's type (0 when even the type byte is missing).
        kind: u8,
    },
    /// An option of length 0.
    #[error("option of type {0} has length 0")]
    EmptyOption(u8),
    /// A `SEQ_DATA` option whose length is not 24.
    #[error("sequence option of length {0}, not {SEQ_DATA_LEN}")]
    BadSeqLength(u8),
    /// A `PE_NAME` longer than the kernel accepts.
    #[error("persistence engine name of {0} bytes, at most {PE_NAME_MAX}")]
    PeNameTooLong(u8),
    /// The same option twice.
    #[error("option of type {0} found twice")]
    DuplicateOption(u8),
}

/// Why the kernel would skip one entry yet go on with the next.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SkipReason {
    /// An unknown option without `IPVS_OPT_F_PARAM`.
    #[error("unknown mandatory option {0}")]
    UnknownMandatoryOption(u8),
    /// Persistence-engine data without the engine's name.
    #[error("persistence engine data without a name")]
    PeDataWithoutName,
    /// A persistence-engine name that is not UTF-8 (no kernel engine has such a name).
    #[error("persistence engine name is not UTF-8")]
    PeNameNotUtf8,
    /// xvs's local-address option with a length that is not the entry family's address and
    /// port.
    #[error("local address option of {0} bytes")]
    BadLocal(u8),
}

/// An entry skipped by [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry's position in the message, from 0.
    pub index: usize,
    /// Why.
    pub reason: SkipReason,
}

/// The entry that ended a message early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryError {
    /// The entry's position in the message, from 0.
    pub index: usize,
    /// What was wrong.
    pub fault: EntryFault,
}

/// A decoded version 1 message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The sender's SyncID (see [`super::syncid_accepted`]).
    pub syncid: u8,
    /// The entries read, in order.
    pub conns: Vec<SyncConn>,
    /// Entries the kernel would skip, the rest of the message still read.
    pub skipped: Vec<Skipped>,
    /// The entry that ended the message early, if one did; the entries before it stand.
    pub ended: Option<EntryError>,
}

/// Why a connection cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The engine name's length is outside 1 to 16 bytes.
    #[error("persistence engine name of {0} bytes, must be 1 to {PE_NAME_MAX}")]
    PeName(usize),
    /// The engine data's length is outside 1 to 255 bytes.
    #[error("persistence engine data of {0} bytes, must be 1 to {PE_DATA_MAX}")]
    PeData(usize),
    /// A local address (FULLNAT) of another family than the entry's.
    #[error("local address of another family than the connection's")]
    LocalFamily,
}

/// The encoded length of `conn`'s entry, without padding.
pub fn entry_len(conn: &SyncConn) -> Result<usize, EncodeError> {
    let mut len = if conn.addrs.is_v6() {
        V6_ENTRY_LEN
    } else {
        V4_ENTRY_LEN
    };
    if conn.seq.is_some() {
        len += 2 + SEQ_DATA_LEN;
    }
    if let Some(pe) = &conn.pe {
        if pe.name.is_empty() || pe.name.len() > PE_NAME_MAX {
            return Err(EncodeError::PeName(pe.name.len()));
        }
        if pe.data.is_empty() || pe.data.len() > PE_DATA_MAX {
            return Err(EncodeError::PeData(pe.data.len()));
        }
        len += 2 + pe.data.len() + 2 + pe.name.len();
    }
    if let Some(local) = conn.local {
        if local.is_ipv6() != conn.addrs.is_v6() {
            return Err(EncodeError::LocalFamily);
        }
        len += 2 + local_len(conn.addrs.is_v6());
    }
    Ok(len)
}

/// Appends `conn`'s entry to `out`; `len` is [`entry_len`]'s answer.
fn write_entry(conn: &SyncConn, len: usize, out: &mut Vec<u8>) {
    let kind = if conn.addrs.is_v6() { STYPE_F_INET6 } else { 0 };
    out.push(kind);
    out.push(conn.protocol);
    // Version 0 in the top nibble; entries are at most 373 bytes, far below 4096.
    out.extend_from_slice(&((len as u16) & SVER_MASK).to_be_bytes());
    out.extend_from_slice(&conn.flags.bits().to_be_bytes());
    out.extend_from_slice(&conn.state.raw().to_be_bytes());
    out.extend_from_slice(&conn.ports.client.to_be_bytes());
    out.extend_from_slice(&conn.ports.virt.to_be_bytes());
    out.extend_from_slice(&conn.ports.dest.to_be_bytes());
    out.extend_from_slice(&conn.fwmark.to_be_bytes());
    out.extend_from_slice(&conn.timeout_secs.to_be_bytes());
    match conn.addrs {
        Addrs::V4 { client, virt, dest } => {
            for a in [client, virt, dest] {
                out.extend_from_slice(&a.octets());
            }
        }
        Addrs::V6 { client, virt, dest } => {
            for a in [client, virt, dest] {
                out.extend_from_slice(&a.octets());
            }
        }
    }
    if let Some(seq) = &conn.seq {
        out.extend_from_slice(&[OPT_SEQ_DATA, SEQ_DATA_LEN as u8]);
        for s in [seq.in_seq, seq.out_seq] {
            for v in [s.init_seq, s.delta, s.previous_delta] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }
    // The kernel writes the name after the data, inside the data's branch; entry_len has
    // checked both lengths fit their one-byte length fields.
    if let Some(pe) = &conn.pe {
        out.extend_from_slice(&[OPT_PE_DATA, pe.data.len() as u8]);
        out.extend_from_slice(&pe.data);
        out.extend_from_slice(&[OPT_PE_NAME, pe.name.len() as u8]);
        out.extend_from_slice(pe.name.as_bytes());
    }
    if let Some(local) = conn.local {
        let v6 = conn.addrs.is_v6();
        out.extend_from_slice(&[OPT_XVS_LOCAL | OPT_F_PARAM, local_len(v6) as u8]);
        // entry_len has checked the family is the entry's.
        match local.ip() {
            std::net::IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            std::net::IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
        out.extend_from_slice(&local.port().to_be_bytes());
    }
}

/// The length of xvs's local-address option's data in an entry of this family.
fn local_len(v6: bool) -> usize {
    if v6 {
        18
    } else {
        6
    }
}

/// Packs entries into version 1 messages of at most `max_len` bytes each, as a master does.
///
/// As in the kernel, an entry that does not fit an empty message of `max_len` still goes
/// out, alone in its message: a too-small maximum slows sync down, it does not stop it.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    syncid: u8,
    max_len: usize,
    done: Vec<Vec<u8>>,
    current: Vec<u8>,
    count: u8,
}

impl MessageBuilder {
    /// A builder of messages from SyncID `syncid`, each at most `max_len` bytes (see
    /// [`super::sync_maxlen`]); `max_len` is capped at 65535, the size field's limit.
    pub fn new(syncid: u8, max_len: usize) -> Self {
        Self {
            syncid,
            max_len: max_len.min(usize::from(u16::MAX)),
            done: Vec::new(),
            current: Vec::new(),
            count: 0,
        }
    }

    /// Adds `conn`, starting a new message when it would not fit the current one.
    pub fn push(&mut self, conn: &SyncConn) -> Result<(), EncodeError> {
        let len = entry_len(conn)?;
        // Padding goes before an entry that follows another, never after the last one.
        let pad = if self.count == 0 {
            0
        } else {
            (4 - self.current.len() % 4) % 4
        };
        if self.count > 0
            && (usize::from(self.count) >= MAX_CONNS
                || self.current.len() + pad + len > self.max_len)
        {
            self.flush();
        }
        if self.count == 0 {
            self.current = header(self.syncid);
        } else {
            self.current.resize(self.current.len() + pad, 0);
        }
        write_entry(conn, len, &mut self.current);
        self.count += 1;
        Ok(())
    }

    /// Closes the message being filled, if it has entries.
    fn flush(&mut self) {
        if self.count == 0 {
            return;
        }
        let mut msg = std::mem::take(&mut self.current);
        // An entry is at most 373 bytes, so even a lone oversized one stays below 65536.
        let size = u16::try_from(msg.len()).unwrap_or(u16::MAX);
        msg[2..4].copy_from_slice(&size.to_be_bytes());
        msg[4] = self.count;
        self.done.push(msg);
        self.count = 0;
    }

    /// Every message, in order; none when no entry was pushed.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.flush();
        self.done
    }
}

/// A header with count and size still 0.
fn header(syncid: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN + V6_ENTRY_LEN);
    h.extend_from_slice(&[0, syncid, 0, 0, 0, PROTO_VERSION, 0, 0]);
    h
}

/// Encodes `conns` into messages of at most `max_len` bytes (see [`MessageBuilder`]).
pub fn encode(syncid: u8, conns: &[SyncConn], max_len: usize) -> Result<Vec<Vec<u8>>, EncodeError> {
    let mut b = MessageBuilder::new(syncid, max_len);
    for c in conns {
        b.push(c)?;
    }
    Ok(b.finish())
}

/// `N` bytes of `b` from `at`, or None past its end.
fn take<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn be16(b: &[u8], at: usize) -> u16 {
    take(b, at).map_or(0, u16::from_be_bytes)
}

fn be32(b: &[u8], at: usize) -> u32 {
    take(b, at).map_or(0, u32::from_be_bytes)
}

/// Reads a version 1 message as a backup kernel does: the header must be right (else the
/// whole datagram is refused), entries the kernel skips are listed in `skipped`, and an entry
/// whose size, type or options are wrong ends the message (`ended`), the entries before it
/// kept. Never panics, whatever the bytes.
///
/// Not checked here, because they need the receiver's configuration: the SyncID filter
/// ([`super::syncid_accepted`]), and whether the protocol and state are ones the receiver
/// knows (the kernel skips an entry of an unknown protocol, or a TCP state of 11 or more).
pub fn decode(buf: &[u8]) -> Result<Message, WireError> {
    // The version 0 header is 4 bytes: the kernel's first length check.
    if buf.len() < 4 {
        return Err(WireError::Truncated { len: buf.len() });
    }
    let size = be16(buf, 2);
    if usize::from(size) != buf.len() {
        return Err(WireError::BadSize {
            header: size,
            actual: buf.len(),
        });
    }
    let (first, syncid) = (buf[0], buf[1]);
    if first != 0 {
        return Err(WireError::Version0 {
            syncid,
            nr_conns: first,
        });
    }
    if buf.len() < HEADER_LEN {
        return Err(WireError::Truncated { len: buf.len() });
    }
    let (nr_conns, version, spare) = (buf[4], buf[5], be16(buf, 6));
    if version != PROTO_VERSION || spare != 0 {
        return Err(WireError::UnknownVersion { version, spare });
    }
    let mut msg = Message {
        syncid,
        ..Message::default()
    };
    let mut at = HEADER_LEN;
    for index in 0..usize::from(nr_conns) {
        let rest = buf.get(at..).unwrap_or_default();
        match entry(rest) {
            Ok((Ok(conn), _)) => msg.conns.push(conn),
            Ok((Err(reason), _)) => msg.skipped.push(Skipped { index, reason }),
            Err(fault) => {
                msg.ended = Some(EntryError { index, fault });
                break;
            }
        }
        // The entry's size was checked against `rest`; the next one starts 4-byte aligned.
        let size = usize::from(be16(rest, 2) & SVER_MASK);
        at += (size + 3) & !3;
    }
    Ok(msg)
}

/// [`decode`], but an entry that ends the message is an error for all of it.
pub fn decode_strict(buf: &[u8]) -> Result<Message, WireError> {
    let msg = decode(buf)?;
    match msg.ended {
        Some(EntryError { index, fault }) => Err(WireError::BadEntry { index, fault }),
        None => Ok(msg),
    }
}

/// What one entry yields: a connection or the reason to skip it, and its size.
type EntryResult = Result<(Result<SyncConn, SkipReason>, usize), EntryFault>;

/// Reads the entry at the start of `rest` (`ip_vs_process_message`'s loop body and
/// `ip_vs_proc_sync_conn`).
fn entry(rest: &[u8]) -> EntryResult {
    if rest.len() < V4_ENTRY_LEN {
        return Err(EntryFault::Truncated { left: rest.len() });
    }
    let ver_size = be16(rest, 2);
    let size = usize::from(ver_size & SVER_MASK);
    if size > rest.len() {
        return Err(EntryFault::Overrun {
            size,
            left: rest.len(),
        });
    }
    if ver_size >> SVER_SHIFT != 0 {
        return Err(EntryFault::BadVersion((ver_size >> SVER_SHIFT) as u8));
    }
    let e = &rest[..size];
    let kind = rest[0];
    // As the kernel: the IPv6 bit wins whatever the other bits say; otherwise only 0 is IPv4.
    let v6 = kind & STYPE_F_INET6 != 0;
    if !v6 && kind != 0 {
        return Err(EntryFault::BadType(kind));
    }
    let fixed = if v6 { V6_ENTRY_LEN } else { V4_ENTRY_LEN };
    if size < fixed {
        return Err(EntryFault::TooShort {
            size,
            needed: fixed,
        });
    }
    let options = match options(&e[fixed..])? {
        Ok(o) => o,
        Err(reason) => return Ok((Err(reason), size)),
    };
    let pe = match (options.pe_data, options.pe_name) {
        (Some(data), Some(name)) => match std::str::from_utf8(name) {
            Ok(name) => Some(PeData {
                name: name.to_owned(),
                data: data.to_vec(),
            }),
            Err(_) => return Ok((Err(SkipReason::PeNameNotUtf8), size)),
        },
        (Some(_), None) => return Ok((Err(SkipReason::PeDataWithoutName), size)),
        // A name without data is ignored by the kernel, so here too.
        (None, _) => None,
    };
    let local = match options.local {
        None => None,
        Some(d) if d.len() == local_len(v6) => {
            let port = be16(d, d.len() - 2);
            let ip: std::net::IpAddr = if v6 {
                std::net::Ipv6Addr::from(take::<16>(d, 0).unwrap_or_default()).into()
            } else {
                std::net::Ipv4Addr::from(take::<4>(d, 0).unwrap_or_default()).into()
            };
            Some(std::net::SocketAddr::new(ip, port))
        }
        Some(d) => return Ok((Err(SkipReason::BadLocal(d.len() as u8)), size)),
    };
    let protocol = e[1];
    let flags = ConnFlags::from_bits(be32(e, 4));
    let addrs = if v6 {
        let a = |at| std::net::Ipv6Addr::from(take::<16>(e, at).unwrap_or_default());
        Addrs::V6 {
            client: a(24),
            virt: a(40),
            dest: a(56),
        }
    } else {
        let a = |at| std::net::Ipv4Addr::from(take::<4>(e, at).unwrap_or_default());
        Addrs::V4 {
            client: a(24),
            virt: a(28),
            dest: a(32),
        }
    };
    let conn = SyncConn {
        protocol,
        flags,
        state: ConnState::classify(protocol, flags.template, be16(e, 8)),
        addrs,
        ports: Ports {
            client: be16(e, 10),
            virt: be16(e, 12),
            dest: be16(e, 14),
        },
        fwmark: be32(e, 16),
        timeout_secs: be32(e, 20),
        seq: options.seq,
        pe,
        local,
    };
    Ok((Ok(conn), size))
}

/// The options of one entry, as found.
#[derive(Default)]
struct Options<'a> {
    seq: Option<SeqOptions>,
    pe_data: Option<&'a [u8]>,
    pe_name: Option<&'a [u8]>,
    local: Option<&'a [u8]>,
}

/// Reads the options after an entry's fixed part (the loop of `ip_vs_proc_sync_conn`).
fn options(mut b: &[u8]) -> Result<Result<Options<'_>, SkipReason>, EntryFault> {
    let mut o = Options::default();
    while !b.is_empty() {
        let [kind, len] = take::<2>(b, 0).ok_or(EntryFault::OptionOverrun { kind: b[0] })?;
        if len == 0 {
            return Err(EntryFault::EmptyOption(kind));
        }
        let data = b
            .get(2..2 + usize::from(len))
            .ok_or(EntryFault::OptionOverrun { kind })?;
        match kind & !OPT_F_PARAM {
            // Ours only with the optional bit, as we send it: without it, it is an unknown
            // mandatory option like any other.
            OPT_XVS_LOCAL if kind & OPT_F_PARAM != 0 && o.local.replace(data).is_some() => {
                return Err(EntryFault::DuplicateOption(kind));
            }
            OPT_XVS_LOCAL if kind & OPT_F_PARAM != 0 => {}
            OPT_SEQ_DATA => {
                if usize::from(len) != SEQ_DATA_LEN {
                    return Err(EntryFault::BadSeqLength(len));
                }
                if o.seq.is_some() {
                    return Err(EntryFault::DuplicateOption(kind));
                }
                let adj = |at| SeqAdjust {
                    init_seq: be32(data, at),
                    delta: be32(data, at + 4),
                    previous_delta: be32(data, at + 8),
                };
                o.seq = Some(SeqOptions {
                    in_seq: adj(0),
                    out_seq: adj(12),
                });
            }
            t @ (OPT_PE_DATA | OPT_PE_NAME) => {
                // PE_DATA's length byte cannot exceed IP_VS_PEDATA_MAXLEN (255); a name can.
                if t == OPT_PE_NAME && data.len() > PE_NAME_MAX {
                    return Err(EntryFault::PeNameTooLong(len));
                }
                let slot = if t == OPT_PE_NAME {
                    &mut o.pe_name
                } else {
                    &mut o.pe_data
                };
                if slot.replace(data).is_some() {
                    return Err(EntryFault::DuplicateOption(kind));
                }
            }
            // The kernel stops reading this entry's options at an unknown mandatory one.
            _ if kind & OPT_F_PARAM == 0 => {
                return Ok(Err(SkipReason::UnknownMandatoryOption(kind)));
            }
            _ => {}
        }
        b = &b[2 + data.len()..];
    }
    Ok(Ok(o))
}
