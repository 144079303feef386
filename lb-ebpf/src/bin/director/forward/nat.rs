//! NAT (masquerading, ipvsadm's `-m`): a client's packet gets the real server's address and
//! port as its destination; the real server routes its replies back through the director, which
//! finds their connection and gives them the VIP and port back as their source. Both directions
//! are routed by the kernel's FIB, so one arm (clients and real servers on one segment) and two
//! arms (an interface each) work alike.
//!
//! A next hop whose MAC the FIB does not know yet (typically a client the director never
//! talked to) gets the packet translated and passed to the kernel, which forwards it and
//! resolves the neighbour: the next packets are sent by XDP again.
//!
//! The director hands the packet to xvs_nat through NAT_JOB and a tail call, as it does for TUN:
//! the rewrite and the FIB lookup then run with a fresh stack. Replies are recognised by their
//! source: each NAT real server's (address, port, protocol) has a bit in the service filter
//! (under lb_common::nat_reply_filter_proto), probed only when CONFIG says NAT is in use and
//! the packet is for no service, so traffic that is not ours pays one CONFIG read.

use lb_common::{
    config_flags, nat_job, nat_reply_filter_proto, Backend, FlowKey, NatReply, Reason, FAMILY_V6,
    TAIL_NAT,
};
use lb_ebpf::{
    helpers::ktime_coarse_ns,
    icmp,
    nat::{rewrite, End},
    packet::Packet,
    parse::{parse, EthHdr, Ipv4Hdr, Ipv6Hdr, Parsed, IPV6_LEN},
    route::{self, Hop, NoRoute, Query},
};

use crate::{
    conntrack,
    maps::{self, count},
    service::filter_hit,
    verdict::Out,
};

/// Hands a client's packet for NAT backend `backend_id` to xvs_nat. Returns only when the NAT
/// program is missing.
#[inline(always)]
pub fn hand_off(pkt: &Packet, backend_id: u32) -> Result<Out, Reason> {
    let job = maps::nat_job_mut().ok_or(Reason::DropTailCallMissing)?;
    job.kind = nat_job::INBOUND;
    job.backend = backend_id;
    maps::tail_call(pkt.ctx(), TAIL_NAT);
    Err(Reason::DropTailCallMissing)
}

/// Whether a packet that is for no service may be a NAT real server's reply: NAT is in use and
/// its source (address and port, or address and any port) is a NAT real server's.
#[inline(always)]
pub fn maybe_reply(p: &Parsed) -> bool {
    let Some(cfg) = maps::config() else {
        return false;
    };
    if cfg.flags & config_flags::NAT == 0 {
        return false;
    }
    let proto = nat_reply_filter_proto(p.proto);
    filter_hit(&p.src, p.sport_be, proto) || filter_hit(&p.src, 0, proto)
}

/// Hands a possible reply to xvs_nat. Returns only when the NAT program is missing.
#[inline(always)]
pub fn hand_off_reply(pkt: &Packet) -> Result<Out, Reason> {
    let job = maps::nat_job_mut().ok_or(Reason::DropTailCallMissing)?;
    job.kind = nat_job::REPLY;
    maps::tail_call(pkt.ctx(), TAIL_NAT);
    Err(Reason::DropTailCallMissing)
}

/// Records the way back of a new NAT connection `key` (client -> VIP) to backend `id`: its
/// replies come from the real server's address and port to the client's.
#[inline(always)]
pub fn record(key: &FlowKey, id: u32, b: &Backend) {
    let reply = FlowKey {
        src: b.addr,
        dst: key.src,
        sport_be: real_port(b, key.dport_be),
        dport_be: key.sport_be,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    let back = NatReply {
        vip: key.dst,
        vport_be: key.dport_be,
        _pad: [0; 2],
        backend: id,
    };
    if maps::nat_reply_insert(&reply, &back).is_err() {
        count(Reason::ConnInsertFailed);
    }
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
    let (kind, id) = (job.kind, job.backend);
    let p = parse(pkt)?;
    if kind == nat_job::INBOUND {
        inbound(pkt, &p, id)
    } else {
        reply(pkt, &p)
    }
}

/// A client's packet: to the real server's address and port.
#[inline(always)]
fn inbound(pkt: &mut Packet, p: &Parsed, id: u32) -> Result<Out, Reason> {
    let b = maps::backend(id).ok_or(Reason::DropBadBackend)?;
    let port = real_port(b, p.dport_be);
    let q = Query {
        family: p.family,
        proto: p.proto,
        src: &p.src,
        dst: &b.addr,
        sport_be: p.sport_be,
        dport_be: port,
        len: ip_len(pkt, p)?,
    };
    let hop = match route::lookup(pkt, &q) {
        Ok(hop) => hop,
        Err(NoRoute::TooBig(mtu)) => {
            // As a router would: the client learns the path MTU (the VIP answers).
            icmp::too_big(pkt, p, mtu)?;
            return Ok(Out::Tx(Reason::TxIcmpTooBig));
        }
        Err(NoRoute::NoNeighbor) => {
            rewrite(pkt, p, End::Dst, &b.addr, port)?;
            return Err(Reason::PassNatNoNeighbor);
        }
        Err(e) => return Err(no_route(e)),
    };
    rewrite(pkt, p, End::Dst, &b.addr, port)?;
    send(pkt, &hop, Reason::TxNat)
}

/// Maybe a real server's reply: its connection's VIP and port become its source, toward the
/// client. Anything that is not a live connection's reply from its own real server goes to
/// the kernel unchanged.
#[inline(always)]
fn reply(pkt: &mut Packet, p: &Parsed) -> Result<Out, Reason> {
    let key = conntrack::flow_key(p);
    let back = maps::nat_reply(&key).ok_or(Reason::PassNatReplyUnknown)?;
    let (vip, vport, id) = (back.vip, back.vport_be, back.backend);
    let conn = FlowKey {
        src: p.dst,
        dst: vip,
        sport_be: p.dport_be,
        dport_be: vport,
        proto: p.proto,
        family: p.family,
        _pad: [0; 2],
    };
    if !conntrack::reply_seen(&conn, p, id, ktime_coarse_ns()) {
        return Err(Reason::PassNatReplyUnknown);
    }
    let q = Query {
        family: p.family,
        proto: p.proto,
        src: &vip,
        dst: &p.dst,
        sport_be: vport,
        dport_be: p.dport_be,
        len: ip_len(pkt, p)?,
    };
    let hop = match route::lookup(pkt, &q) {
        Ok(hop) => hop,
        Err(NoRoute::TooBig(mtu)) => {
            // The real server's TCP learns the path MTU toward the client.
            icmp::too_big(pkt, p, mtu)?;
            return Ok(Out::Tx(Reason::TxIcmpTooBig));
        }
        Err(NoRoute::NoNeighbor) => {
            rewrite(pkt, p, End::Src, &vip, vport)?;
            return Err(Reason::PassNatNoNeighbor);
        }
        Err(e) => return Err(no_route(e)),
    };
    rewrite(pkt, p, End::Src, &vip, vport)?;
    send(pkt, &hop, Reason::TxNatReply)
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
    eth.dst.copy_from_slice(&hop.dmac);
    eth.src.copy_from_slice(&hop.smac);
    if hop.ifindex == pkt.ingress_ifindex() {
        Ok(Out::Tx(tx))
    } else {
        Ok(Out::Redirect(hop.ifindex, Reason::RedirectNat))
    }
}
