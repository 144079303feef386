//! NAT (masquerading, ipvsadm's `-m`): a client's packet gets the real server's address and
//! port as its destination; the real server routes its replies back through the director, which
//! finds their connection and gives them the VIP and port back as their source. FULLNAT (DPVS's
//! `-b`) also replaces the client's address and port by a local address and port of the
//! service's pool, so the real server answers the director whatever its routes; the reply gets
//! the VIP as its source and the client as its destination back. Both directions are routed by
//! the kernel's FIB, so one arm (clients and real servers on one segment) and two arms (an
//! interface each) work alike.
//!
//! A FULLNAT port is allocated when the connection's first packet reaches xvs_nat: this CPU's
//! cursor walks the pool's (address, port) candidates, and the first whose reply flow (real
//! server -> local address and port) the kernel inserts into NAT_REPLIES with BPF_NOEXIST is
//! the connection's. The insert is the check, atomically, so no two connections toward one real
//! server ever share a (local address, port); CPUs start their walks far apart, so they rarely
//! meet. xvsd removes the way back when the connection ends, which frees the port.
//!
//! A next hop whose MAC the FIB does not know yet (typically a client the director never
//! talked to) gets the packet translated and passed to the kernel, which forwards it and
//! resolves the neighbour: the next packets are sent by XDP again.
//!
//! The director hands the packet to xvs_nat through NAT_JOB and a tail call, as it does for TUN:
//! the rewrite and the FIB lookup then run with a fresh stack; ICMP errors go on to
//! xvs_nat_icmp, another fresh stack, for their translation. Replies are recognised by their
//! source: each NAT real server's (address, port, protocol) has a bit in the service filter
//! (under lb_common::nat_reply_filter_proto), probed only when CONFIG says NAT is in use and
//! the packet is for no service, so traffic that is not ours pays one CONFIG read.

use lb_common::{
    config_flags, flow_hash, fwd, laddr_key, nat_job, nat_reply_filter_proto, Backend, FlowKey,
    NatReply, Reason, FAMILY_V4, FAMILY_V6, FULLNAT_PROBES, PROTO_ICMP, PROTO_ICMPV6,
    REPLY_ROUTE_SLOTS, TAIL_NAT, TAIL_NAT_ICMP, TUN_ROUTE_SLOTS, TUN_ROUTE_TTL_NS,
};
use lb_ebpf::{
    helpers::{ktime_coarse_ns, smp_processor_id},
    icmp,
    nat::{icmp_rewrite, rewrite, rewrite_icmp, status, Tuple},
    nat64, nat64_icmp,
    packet::{copy_mac, Packet},
    parse::{parse, EthHdr, Ipv4Hdr, Ipv6Hdr, Parsed, IPV4_LEN, IPV6_LEN},
    route::{self, Hop, Mac, NoRoute, Query},
};

use crate::{
    conntrack::{self, Conn},
    maps::{self, count},
    service::filter_hit,
    verdict::{Out, Packed},
};

/// Hands a client's packet of NAT or FULLNAT connection `conn` to xvs_nat. Returns only when
/// the NAT program is missing.
#[inline(always)]
pub fn hand_off(pkt: &Packet, conn: &Conn) -> Result<Out, Reason> {
    let job = maps::nat_job_mut().ok_or(Reason::DropTailCallMissing)?;
    job.kind = nat_job::INBOUND;
    job.backend = conn.backend;
    job.service = conn.service;
    job.local = conn.local;
    job.fresh = conn.fresh as u8;
    job.lport_be = conn.lport_be;
    maps::tail_call(pkt.ctx(), TAIL_NAT);
    Err(Reason::DropTailCallMissing)
}

/// Whether a packet that is for no service may be a NAT or FULLNAT real server's reply: one of
/// them is in use and its source (address and port, or address and any port) is such a real
/// server's.
#[inline(always)]
pub fn maybe_reply(p: &Parsed) -> bool {
    if !in_use() {
        return false;
    }
    let proto = nat_reply_filter_proto(p.proto);
    filter_hit(&p.src, p.sport_be, proto) || filter_hit(&p.src, 0, proto)
}

/// Whether some real server is reached by NAT or FULLNAT (CONFIG's flag).
#[inline(always)]
pub fn in_use() -> bool {
    maps::config().is_some_and(|c| c.flags & config_flags::NAT != 0)
}

/// Hands a possible reply to xvs_nat. Returns only when the NAT program is missing.
#[inline(always)]
pub fn hand_off_reply(pkt: &Packet) -> Result<Out, Reason> {
    let job = maps::nat_job_mut().ok_or(Reason::DropTailCallMissing)?;
    job.kind = nat_job::REPLY;
    maps::tail_call(pkt.ctx(), TAIL_NAT);
    Err(Reason::DropTailCallMissing)
}

/// Records the way back of the new NAT connection of packet `p` (client -> VIP) to backend
/// `id`: its replies come from the real server's address and port to the client's.
#[inline(never)]
fn record_call(p: &Parsed, id: u32) {
    let Some(b) = maps::backend(id) else {
        return;
    };
    let mut reply = FlowKey {
        dst: p.src,
        dport_be: p.sport_be,
        ..FlowKey::default()
    };
    let mut back = NatReply::default();
    way_back(p, id, b, &mut reply, &mut back);
    if maps::nat_reply_insert(&reply, &back).is_err() {
        count(Reason::ConnInsertFailed);
    }
}

/// Fills in the way back of the connection of packet `p` (client -> VIP) to backend `id`: its
/// replies' flow (from the real server, in the real server's family; the caller sets where they
/// go: the client for NAT, a local address and port for FULLNAT) and what they are translated
/// back to. In place: the callers' frames are tight.
#[inline(always)]
fn way_back(p: &Parsed, id: u32, b: &Backend, reply: &mut FlowKey, back: &mut NatReply) {
    reply.src = b.addr;
    reply.sport_be = real_port(b, p.dport_be);
    reply.proto = p.proto;
    reply.family = b.family;
    back.vip = p.dst;
    back.client = p.src;
    back.vport_be = p.dport_be;
    back.cport_be = p.sport_be;
    back.backend = id;
    back.family = p.family;
}

/// The port a NAT real server is reached on: its own, or (port 0) the client's destination.
#[inline(always)]
fn real_port(b: &Backend, dport_be: u16) -> u16 {
    if b.port_be != 0 {
        b.port_be
    } else {
        dport_be
    }
}

/// The body of xvs_nat.
#[inline(always)]
pub fn run(pkt: &mut Packet) -> Result<Out, Reason> {
    let job = maps::nat_job().ok_or(Reason::DropTailCallMissing)?;
    let (inbound, id) = (job.kind == nat_job::INBOUND, job.backend);
    let mut local = Local {
        service: job.service,
        slot: job.local,
        lport_be: job.lport_be,
    };
    let p = parse(pkt)?;
    if is_icmp(&p) {
        // ICMP errors have a program of their own (a fresh stack for their translation).
        maps::tail_call(pkt.ctx(), TAIL_NAT_ICMP);
        return Err(Reason::DropTailCallMissing);
    }
    // A new connection's way back first (replies need no backend here).
    let fwd = if inbound {
        maps::backend(id).map_or(fwd::DR, |b| b.fwd)
    } else {
        fwd::DR
    };
    if job.fresh != 0 && fwd == fwd::NAT {
        record_call(&p, id);
    }
    if local.lport_be == 0 && fwd == fwd::FULLNAT {
        // A new FULLNAT connection: its (local address, port) first.
        let got = allocate_call(&p, id, local.service, local.slot);
        settle_call(&p, (got >> 16) as u8, got as u16);
        if got == 0 {
            return Err(Reason::DropFullNatNoPort);
        }
        local.slot = (got >> 16) as u8;
        local.lport_be = got as u16;
        if maps::config().is_some_and(|c| c.flags & config_flags::AUDIT_FULLNAT != 0) {
            audit_call(&p, id, local.service, local.slot, local.lport_be);
        }
    }
    let step = if inbound {
        to_server(pkt, &p, id, &local)
    } else {
        reply(pkt, &p)
    };
    if let Some(mtu) = step.too_big() {
        // As a router would: the sender learns the path MTU.
        icmp::too_big(pkt, &p, mtu)?;
        return Ok(Out::Tx(Reason::TxIcmpTooBig));
    }
    step.decode()
}

/// The body of xvs_nat_icmp: an ICMP error about a NAT or FULLNAT connection, tail-called by
/// xvs_nat with the job it was given. The translation is planned into this CPU's scratch
/// (not the stack) by one subprogram and done by another: their frames are siblings. A NAT64
/// connection's error (the other family's) is planned and translated by subprograms of its own.
#[inline(always)]
pub fn run_icmp(pkt: &mut Packet) -> Result<Out, Reason> {
    let job = maps::nat_job().ok_or(Reason::DropTailCallMissing)?;
    let inbound = job.kind == nat_job::INBOUND;
    let p = parse(pkt)?;
    let mut hop = Hop::default();
    let mut planned = if inbound {
        icmp_inbound_call(pkt, &p, &mut hop)
    } else {
        icmp_reply_call(pkt, &p, &mut hop)
    };
    let nat64 = planned == PLAN_NAT64;
    if nat64 {
        planned = icmp64_call(pkt, &p, inbound);
        if planned == 0 {
            planned = route64_call(pkt, &p, &mut hop);
        }
    }
    translated(planned)?;
    let t = maps::icmp_scratch().ok_or(Reason::DropTailCallMissing)?;
    translated(if nat64 {
        nat64_icmp::translate(pkt, &p, t)
    } else {
        rewrite_icmp(pkt, &p, t)
    })?;
    send(
        pkt,
        &hop,
        if inbound {
            Reason::TxNat
        } else {
            Reason::TxNatReply
        },
    )
}

// The allocation, the way back's record and each kind of ICMP error are BPF subprograms of
// their own, and the too-big answer is made by the caller: their stack frames are siblings,
// never added up.

#[inline(never)]
fn allocate_call(p: &Parsed, id: u32, service: u32, slots: u8) -> u32 {
    allocate(p, id, service, slots)
}

/// A FULLNAT connection's local side as the job carries it.
struct Local {
    /// Service id.
    service: u32,
    /// Local-address slot (the pool's slot count while `lport_be` is 0).
    slot: u8,
    /// Local port, network order; 0 for NAT.
    lport_be: u16,
}

/// Gives the new FULLNAT connection of packet `p` (client -> VIP) to backend `id` a local
/// address and port: this CPU's cursor walks the service's candidates, and the first whose
/// reply flow the kernel records as new is taken. The result is (slot << 16 | port, network
/// order), or 0 when FULLNAT_PROBES candidates were all taken (the service's refusals are
/// counted for xvsd's log).
#[inline(always)]
fn allocate(p: &Parsed, id: u32, service: u32, slots: u8) -> u32 {
    let Some(b) = maps::backend(id) else {
        return 0;
    };
    let Some(cursor) = maps::fullnat_cursor(service) else {
        return 0;
    };
    let n = slots as u32;
    if n == 0 {
        maps::count_fullnat_exhausted(service);
        return 0;
    }
    // CPUs start far apart in the candidates (a large odd stride), so they seldom meet.
    let base = cursor.wrapping_add(smp_processor_id().wrapping_mul(0x9e37_79b1));
    // The local address and port are filled in per candidate.
    let mut reply = FlowKey::default();
    let mut back = NatReply::default();
    way_back(p, id, b, &mut reply, &mut back);
    let mut i = 0;
    while i < FULLNAT_PROBES {
        let k = base.wrapping_add(i);
        i += 1;
        let slot = (k % n) as u8;
        let Some(la) = maps::laddr(laddr_key(service, slot)) else {
            continue;
        };
        if la.family != b.family || la.port_count == 0 {
            continue;
        }
        let port = la
            .port_lo
            .wrapping_add(((k / n) % la.port_count as u32) as u16);
        reply.dst = la.addr;
        reply.dport_be = port.to_be();
        if maps::nat_reply_claim(&reply, &back).is_ok() {
            *cursor = cursor.wrapping_add(i);
            return (slot as u32) << 16 | reply.dport_be as u32;
        }
    }
    *cursor = cursor.wrapping_add(FULLNAT_PROBES);
    maps::count_fullnat_exhausted(service);
    0
}

/// Reports the new FULLNAT connection of packet `p` (to backend `id`, given local address
/// `slot` of `service` and port `lport_be`) for xvsd's audit log.
#[inline(never)]
fn audit_call(p: &Parsed, id: u32, service: u32, slot: u8, lport_be: u16) {
    let (Some(b), Some(la)) = (maps::backend(id), maps::laddr(laddr_key(service, slot))) else {
        return;
    };
    let sent = maps::audit_fullnat(|e| {
        e.client = p.src;
        e.vip = p.dst;
        e.local = la.addr;
        e.real = b.addr;
        e.cport_be = p.sport_be;
        e.vport_be = p.dport_be;
        e.lport_be = lport_be;
        e.rport_be = real_port(b, p.dport_be);
        e.service = service;
        e.proto = p.proto;
        e.family = p.family;
    });
    if !sent {
        count(Reason::FullNatAuditLost);
    }
}

/// Gives the connection of packet `p` its local slot and port, or (port 0: none was free)
/// forgets it, so the client's retry is a new connection. A subprogram: its key stays off
/// the allocation's frame.
#[inline(never)]
fn settle_call(p: &Parsed, slot: u8, lport_be: u16) {
    let key = conntrack::flow_key(p);
    if lport_be == 0 {
        conntrack::forget(&key);
    } else {
        conntrack::set_local(&key, slot, lport_be);
    }
}

#[inline(never)]
fn icmp_inbound_call(pkt: &Packet, p: &Parsed, hop: &mut Hop) -> u32 {
    plan_status(icmp_inbound(pkt, p, hop))
}

#[inline(never)]
fn icmp_reply_call(pkt: &Packet, p: &Parsed, hop: &mut Hop) -> u32 {
    plan_status(icmp_reply(pkt, p, hop))
}

#[inline(never)]
fn icmp64_call(pkt: &Packet, p: &Parsed, inbound: bool) -> u32 {
    status(icmp64(pkt, p, inbound))
}

#[inline(never)]
fn route64_call(pkt: &Packet, p: &Parsed, hop: &mut Hop) -> u32 {
    status(route64(pkt, p, hop))
}

/// What a same-family ICMP planner found.
enum Planned {
    /// The translation is planned in this CPU's scratch.
    Ready,
    /// The connection is NAT64's (the error is the other family's): `icmp64` plans it.
    Nat64,
}

/// The ICMP planners' answer (instead of 0 or a reason) for an error about a NAT64
/// connection.
const PLAN_NAT64: u32 = 0x100;
const _: () = assert!(PLAN_NAT64 >= lb_common::reason::REASON_SLOTS);

/// A planner's result in one register: 0, PLAN_NAT64, or the reason.
#[inline(always)]
fn plan_status(r: Result<Planned, Reason>) -> u32 {
    match r {
        Ok(Planned::Ready) => 0,
        Ok(Planned::Nat64) => PLAN_NAT64,
        Err(reason) => reason as u32,
    }
}

/// Address equality as four word compares (an array compare may become a bcmp call, which BPF
/// has not).
#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = |x: &[u8; 16], i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
    w(a, 0) == w(b, 0) && w(a, 4) == w(b, 4) && w(a, 8) == w(b, 8) && w(a, 12) == w(b, 12)
}

/// Turns a reply flow's key (real server's side) into its connection's, as the client made it:
/// in place, one key on the stack.
#[inline(always)]
fn client_key(key: &mut FlowKey, back: &NatReply) {
    key.src = back.client;
    key.dst = back.vip;
    key.sport_be = back.cport_be;
    key.dport_be = back.vport_be;
    key.family = back.family;
}

#[inline(always)]
fn is_icmp(p: &Parsed) -> bool {
    p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6
}

/// An ICMP error about a reply of the job's NAT or FULLNAT connection, addressed to the VIP
/// (the path toward the client reports a problem): to the real server, its quote made what the
/// server sent (source RIP:rport instead of VIP:vport; FULLNAT: to LIP:lport instead of the
/// client, and the error itself from the local address), so its stack finds the connection.
#[inline(always)]
fn icmp_inbound(pkt: &Packet, p: &Parsed, hop: &mut Hop) -> Result<Planned, Reason> {
    let job = maps::nat_job().ok_or(Reason::DropTailCallMissing)?;
    let (id, service, slot, lport_be) = (job.backend, job.service, job.local, job.lport_be);
    let b = maps::backend(id).ok_or(Reason::DropBadBackend)?;
    if b.family != p.family {
        return Ok(Planned::Nat64);
    }
    let dport_be = icmp::quoted_flow(pkt, p).ok_or(Reason::PassIcmp)?.dport_be;
    let q = icmp::quote(pkt, p).ok_or(Reason::PassIcmp)?;
    let t = maps::icmp_scratch().ok_or(Reason::DropTailCallMissing)?;
    t.quote_l3 = q.l3_off;
    t.quote_l4 = q.l4_off;
    t.outer_dst = b.addr;
    t.inner_src = b.addr;
    t.inner_sport_be = real_port(b, dport_be);
    t.flags = icmp_rewrite::OUTER_DST | icmp_rewrite::INNER_SRC;
    if b.fwd == fwd::FULLNAT {
        let la = maps::laddr(laddr_key(service, slot)).ok_or(Reason::PassIcmp)?;
        if lport_be == 0 {
            return Err(Reason::PassIcmp);
        }
        t.outer_src = la.addr;
        t.inner_dst = la.addr;
        t.inner_dport_be = lport_be;
        t.flags |= icmp_rewrite::OUTER_SRC | icmp_rewrite::INNER_DST;
    }
    *hop = route_to(pkt, p, &b.addr)?;
    Ok(Planned::Ready)
}

/// An ICMP error a NAT or FULLNAT real server (or a router on its side) sends about a packet
/// the director sent it: toward the client, about a packet to the VIP. NAT: the quote's
/// destination becomes the VIP's, and an error from the real server itself comes from the
/// VIP. FULLNAT: the quote becomes the client's packet (CIP:cport -> VIP:vport), and the error
/// goes from the VIP to the client.
#[inline(always)]
fn icmp_reply(pkt: &Packet, p: &Parsed, hop: &mut Hop) -> Result<Planned, Reason> {
    // The quoted packet went toward the real server: as NAT_REPLIES keys it, from the server.
    let mut key = icmp::quoted_flow(pkt, p).ok_or(Reason::PassIcmp)?;
    let back = maps::nat_reply(&key).ok_or(Reason::PassNatReplyUnknown)?;
    if back.family != p.family {
        return Ok(Planned::Nat64);
    }
    let fullnat = !same_addr(&back.client, &key.dst) || back.cport_be != key.dport_be;
    let from_server = same_addr(&p.src, &key.src);
    // The same key, now the connection's as the client made it.
    client_key(&mut key, back);
    if conntrack::reply_seen(&key, p, back.backend, ktime_coarse_ns()).is_none() {
        return Err(Reason::PassNatReplyUnknown);
    }
    let q = icmp::quote(pkt, p).ok_or(Reason::PassIcmp)?;
    let t = maps::icmp_scratch().ok_or(Reason::DropTailCallMissing)?;
    t.quote_l3 = q.l3_off;
    t.quote_l4 = q.l4_off;
    t.outer_src = back.vip;
    t.inner_dst = back.vip;
    t.inner_dport_be = back.vport_be;
    t.flags = icmp_rewrite::INNER_DST;
    if from_server || fullnat {
        t.flags |= icmp_rewrite::OUTER_SRC;
    }
    if fullnat {
        t.outer_dst = back.client;
        t.inner_src = back.client;
        t.inner_sport_be = back.cport_be;
        t.flags |= icmp_rewrite::OUTER_DST | icmp_rewrite::INNER_SRC;
    }
    *hop = route_to(pkt, p, &back.client)?;
    Ok(Planned::Ready)
}

/// An ICMP error about a NAT64 connection, planned for nat64_icmp's translation: as FULLNAT's
/// (`icmp_inbound`, `icmp_reply`), both ends of the quote and of the error itself, in the other
/// family. Inbound (ICMPv6 from the client's path, about VIP6:vport -> CIP6:cport): to the real
/// server from the local address, about RIP:rport -> LIP:lport. A reply's (ICMPv4 from the real
/// server's side, about LIP:lport -> RIP:rport): to the client from the VIP, about
/// CIP6:cport -> VIP6:vport.
#[inline(always)]
fn icmp64(pkt: &Packet, p: &Parsed, inbound: bool) -> Result<(), Reason> {
    let q = icmp::quote(pkt, p).ok_or(Reason::PassIcmp)?;
    let mut key = icmp::quoted_flow(pkt, p).ok_or(Reason::PassIcmp)?;
    let t = maps::icmp_scratch().ok_or(Reason::DropTailCallMissing)?;
    t.quote_l3 = q.l3_off;
    t.quote_l4 = q.l4_off;
    t.flags = icmp_rewrite::OUTER_SRC
        | icmp_rewrite::OUTER_DST
        | icmp_rewrite::INNER_SRC
        | icmp_rewrite::INNER_DST;
    if inbound {
        let job = maps::nat_job().ok_or(Reason::DropTailCallMissing)?;
        let (id, service, slot, lport_be) = (job.backend, job.service, job.local, job.lport_be);
        let b = maps::backend(id).ok_or(Reason::DropBadBackend)?;
        let la = maps::laddr(laddr_key(service, slot)).ok_or(Reason::PassIcmp)?;
        if b.fwd != fwd::FULLNAT || lport_be == 0 {
            return Err(Reason::PassIcmp);
        }
        t.outer_src = la.addr;
        t.outer_dst = b.addr;
        t.inner_src = b.addr;
        // The quote's source port is the VIP's (the key's destination port).
        t.inner_sport_be = real_port(b, key.dport_be);
        t.inner_dst = la.addr;
        t.inner_dport_be = lport_be;
    } else {
        // The quoted packet went toward the real server: as NAT_REPLIES keys it.
        let back = maps::nat_reply(&key).ok_or(Reason::PassNatReplyUnknown)?;
        client_key(&mut key, back);
        if conntrack::reply_seen(&key, p, back.backend, ktime_coarse_ns()).is_none() {
            return Err(Reason::PassNatReplyUnknown);
        }
        t.outer_src = back.vip;
        t.outer_dst = back.client;
        t.inner_src = back.client;
        t.inner_sport_be = back.cport_be;
        t.inner_dst = back.vip;
        t.inner_dport_be = back.vport_be;
    }
    Ok(())
}

/// The next hop of a NAT64 connection's ICMP error, planned by `icmp64`, once translated to
/// the other family. A step of its own: its query's frame is not the planner's.
#[inline(always)]
fn route64(pkt: &Packet, p: &Parsed, hop: &mut Hop) -> Result<(), Reason> {
    let t = maps::icmp_scratch().ok_or(Reason::DropTailCallMissing)?;
    let family = if p.family == FAMILY_V6 {
        FAMILY_V4
    } else {
        FAMILY_V6
    };
    // The translated length: IPv4 -> IPv6 trades two IPv4 headers (the outer one with any
    // options) for two IPv6 headers; IPv6 -> IPv4 is 40 bytes shorter.
    let len = ip_len(pkt, p)?;
    let len = if family == FAMILY_V6 {
        let ihl = (p.l4_off - p.l3_off) as u16;
        len.saturating_add((2 * IPV6_LEN - IPV4_LEN) as u16)
            .saturating_sub(ihl)
    } else {
        len.saturating_sub((2 * (IPV6_LEN - IPV4_LEN)) as u16)
    };
    let proto = if family == FAMILY_V6 {
        PROTO_ICMPV6
    } else {
        PROTO_ICMP
    };
    let q = Query {
        family,
        proto,
        src: &t.outer_src,
        dst: &t.outer_dst,
        sport_be: 0,
        dport_be: 0,
        len,
    };
    *hop = route::lookup(pkt, &q).map_err(no_route)?;
    Ok(())
}

/// rewrite_icmp's result as a Result.
#[inline(always)]
fn translated(rc: u32) -> Result<(), Reason> {
    match rc {
        0 => Ok(()),
        r => Err(Reason::from_index(r).unwrap_or(Reason::DropMalformedL4)),
    }
}

/// The next hop toward `dst` for an ICMP error (no ports), or why there is none (an error that
/// cannot be routed now is dropped: ICMP is best effort, and its sender retries).
#[inline(always)]
fn route_to(pkt: &Packet, p: &Parsed, dst: &[u8; 16]) -> Result<Hop, Reason> {
    let q = Query {
        family: p.family,
        proto: p.proto,
        src: &p.src,
        dst,
        sport_be: 0,
        dport_be: 0,
        len: ip_len(pkt, p)?,
    };
    route::lookup(pkt, &q).map_err(no_route)
}

/// A client's packet: to the real server's address and port (FULLNAT: from the connection's
/// local address and port).
#[inline(always)]
fn to_server(pkt: &mut Packet, p: &Parsed, id: u32, local: &Local) -> Packed {
    let Some(b) = maps::backend(id) else {
        return Packed::encode(Err(Reason::DropBadBackend));
    };
    let (src, sport, tx) = if b.fwd == fwd::FULLNAT {
        match maps::laddr(laddr_key(local.service, local.slot)) {
            Some(la) => (&la.addr, local.lport_be, Reason::TxFullNat),
            // Its local address was deleted: the connection cannot go on.
            None => return Packed::encode(Err(Reason::DropBadBackend)),
        }
    } else {
        (&p.src, p.sport_be, Reason::TxNat)
    };
    let t = Tuple {
        src,
        sport_be: sport,
        dst: &b.addr,
        dport_be: real_port(b, p.dport_be),
    };
    // NAT64: an IPv6 client's packet leaves as IPv4, 20 bytes shorter.
    let nat64 = b.family != p.family;
    let len = match ip_len(pkt, p) {
        Ok(len) if nat64 => len.saturating_sub(20),
        Ok(len) => len,
        Err(reason) => return Packed::encode(Err(reason)),
    };
    // This CPU's last FIB answer for the backend, while it is young, of this slot and
    // generation, and the packet fits its MTU (the cache TUN uses: backends of either mode own
    // their slot's entry).
    let now = ktime_coarse_ns();
    let cache = maps::tun_route(id % TUN_ROUTE_SLOTS);
    if let Some(r) = &cache {
        if r.expires_ns > now
            && r.backend == id
            && r.generation == b.generation
            && len as u32 <= r.mtu
        {
            let hop = Hop {
                ifindex: r.ifindex,
                dmac: Mac(r.dmac),
                smac: Mac(r.smac),
                mtu: r.mtu,
            };
            return deliver(pkt, p, &t, nat64, Ok(hop), tx);
        }
    }
    let q = Query {
        family: b.family,
        proto: p.proto,
        src: t.src,
        dst: &b.addr,
        sport_be: t.sport_be,
        dport_be: t.dport_be,
        len,
    };
    let route = route::lookup(pkt, &q);
    if let (Ok(hop), Some(r)) = (&route, cache) {
        r.expires_ns = now + TUN_ROUTE_TTL_NS;
        r.backend = id;
        r.generation = b.generation;
        r.ifindex = hop.ifindex;
        r.mtu = hop.mtu;
        r.src = [0; 16];
        r.dmac = hop.dmac.0;
        r.smac = hop.smac.0;
    }
    deliver(pkt, p, &t, nat64, route, tx)
}

/// The packet translated to `t` and sent along the FIB's answer, or what the answer says
/// instead: a next hop without a MAC gets the translated packet through the kernel, a packet
/// too big for the route is answered by the caller with the MTU its sender must use (NAT64:
/// the translation changes the length by 20 bytes), no route drops it.
#[inline(always)]
fn deliver(
    pkt: &mut Packet,
    p: &Parsed,
    t: &Tuple,
    nat64: bool,
    route: Result<Hop, NoRoute>,
    tx: Reason,
) -> Packed {
    match route {
        Ok(hop) => Packed::encode(translate(pkt, p, t, nat64).and_then(|()| send(pkt, &hop, tx))),
        Err(NoRoute::NoNeighbor) => {
            Packed::encode(translate(pkt, p, t, nat64).and(Err(Reason::PassNatNoNeighbor)))
        }
        // IPv6 to IPv4 shrinks by 20 bytes: the IPv6 sender may send 20 more than the route's
        // MTU; IPv4 to IPv6 grows by 20: the IPv4 sender must send 20 less.
        Err(NoRoute::TooBig(mtu)) if nat64 && p.family == FAMILY_V6 => Packed::too_big_of(mtu + 20),
        Err(NoRoute::TooBig(mtu)) if nat64 => Packed::too_big_of(mtu.saturating_sub(20)),
        Err(NoRoute::TooBig(mtu)) => Packed::too_big_of(mtu),
        Err(e) => Packed::encode(Err(no_route(e))),
    }
}

/// The packet's addresses and ports to `t`, in its own family or (`nat64`) the other one.
#[inline(always)]
fn translate(pkt: &mut Packet, p: &Parsed, t: &Tuple, nat64: bool) -> Result<(), Reason> {
    if !nat64 {
        rewrite(pkt, p, t)
    } else if p.family == FAMILY_V6 {
        nat64::to_ipv4(pkt, p, t)
    } else {
        nat64::to_ipv6(pkt, p, t)
    }
}

/// Maybe a real server's reply: its connection's VIP and port become its source, and (FULLNAT)
/// the client's address and port its destination (NAT64: as IPv6). Anything that is not a live
/// connection's reply from its own real server goes to the kernel unchanged.
#[inline(always)]
fn reply(pkt: &mut Packet, p: &Parsed) -> Packed {
    let mut key = conntrack::flow_key(p);
    let Some(back) = maps::nat_reply(&key) else {
        return Packed::encode(Err(Reason::PassNatReplyUnknown));
    };
    // The same key, now the connection's as the client made it (one key on the stack).
    client_key(&mut key, back);
    let Some(b) = conntrack::reply_seen(&key, p, back.backend, ktime_coarse_ns()) else {
        return Packed::encode(Err(Reason::PassNatReplyUnknown));
    };
    maps::add_out_stats(b.service, back.backend, pkt.len() as u64);
    // NAT64: an IPv4 reply goes back as IPv6, 20 bytes longer.
    let nat64 = back.family != p.family;
    let len = match ip_len(pkt, p) {
        Ok(len) if nat64 => len.saturating_add(20),
        Ok(len) => len,
        Err(reason) => return Packed::encode(Err(reason)),
    };
    let t = Tuple {
        src: &back.vip,
        sport_be: back.vport_be,
        dst: &back.client,
        dport_be: back.cport_be,
    };
    // This CPU's last FIB answer for the client, while it is young, of this client and family,
    // and the packet fits its MTU; not when the kernel's multipath hash uses ports (then the
    // route is the flow's, not the client's).
    let now = ktime_coarse_ns();
    let cache = if maps::config().is_some_and(|c| c.flags & per_flow_routes(back.family) != 0) {
        None
    } else {
        maps::reply_route(flow_hash(&back.client, 0) % REPLY_ROUTE_SLOTS)
    };
    if let Some(r) = &cache {
        if r.expires_ns > now
            && r.family == back.family
            && same_addr(&r.addr, &back.client)
            && len as u32 <= r.mtu
        {
            let hop = Hop {
                ifindex: r.ifindex,
                dmac: Mac(r.dmac),
                smac: Mac(r.smac),
                mtu: r.mtu,
            };
            return deliver(pkt, p, &t, nat64, Ok(hop), Reason::TxNatReply);
        }
    }
    let q = Query {
        family: back.family,
        proto: p.proto,
        src: t.src,
        dst: t.dst,
        sport_be: t.sport_be,
        dport_be: t.dport_be,
        len,
    };
    let route = route::lookup(pkt, &q);
    if let (Ok(hop), Some(r)) = (&route, cache) {
        r.expires_ns = now + TUN_ROUTE_TTL_NS;
        r.addr = back.client;
        r.family = back.family;
        r.ifindex = hop.ifindex;
        r.mtu = hop.mtu;
        r.dmac = hop.dmac.0;
        r.smac = hop.smac.0;
    }
    deliver(pkt, p, &t, nat64, route, Reason::TxNatReply)
}

/// CONFIG's flag saying the kernel's multipath hash of `family` uses ports (named for GUE, whose
/// routes it first concerned): a route is then a flow's, never cached per address.
#[inline(always)]
fn per_flow_routes(family: u8) -> u8 {
    if family == FAMILY_V6 {
        config_flags::GUE_ROUTE_PER_FLOW6
    } else {
        config_flags::GUE_ROUTE_PER_FLOW4
    }
}

/// The IP packet's length, from its header (what the FIB compares with the route MTU).
#[inline(always)]
fn ip_len(pkt: &Packet, p: &Parsed) -> Result<u16, Reason> {
    if p.family == FAMILY_V6 {
        let ip = pkt
            .header::<Ipv6Hdr>(p.l3_off)
            .ok_or(Reason::DropMalformedL3)?;
        Ok(u16::from_be_bytes(ip.payload_len).saturating_add(IPV6_LEN as u16))
    } else {
        let ip = pkt
            .header::<Ipv4Hdr>(p.l3_off)
            .ok_or(Reason::DropMalformedL3)?;
        Ok(u16::from_be_bytes(ip.tot_len))
    }
}

#[inline(always)]
fn no_route(e: NoRoute) -> Reason {
    match e {
        NoRoute::ForwardingDisabled => Reason::DropNatFwdDisabled,
        NoRoute::Unreachable | NoRoute::NoNeighbor | NoRoute::TooBig(_) => Reason::DropNatNoRoute,
    }
}

/// The next hop's MACs, then out: back through the ingress interface, or redirected.
#[inline(always)]
fn send(pkt: &mut Packet, hop: &Hop, tx: Reason) -> Result<Out, Reason> {
    let eth = pkt.header_mut::<EthHdr>(0).ok_or(Reason::DropTruncatedL2)?;
    copy_mac(&mut eth.dst, &hop.dmac.0);
    copy_mac(&mut eth.src, &hop.smac.0);
    if hop.ifindex == pkt.ingress_ifindex() {
        Ok(Out::Tx(tx))
    } else {
        Ok(Out::Redirect(hop.ifindex, Reason::RedirectNat))
    }
}
