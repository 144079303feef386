//! The director: balances virtual-service traffic to real servers (DR, TUN and NAT mode),
//! translates NAT real servers' replies back, relays ICMP errors about balanced flows to their
//! real servers, passes the rest.
//!
//! Four XDP programs share these maps: `xvs_director` (attached), and the tail-called
//! `xvs_icmp`, `xvs_tunnel` and `xvs_nat`, which run with a fresh stack of their own. A packet
//! through `xvs_director`: station address -> parse -> ICMP hand-off -> service filter (else: a
//! NAT reply?) -> connection table -> (new flow: service, persistence, scheduler table,
//! connection entry) -> counters -> forward.
#![no_std]
#![no_main]
// The scheduler cursor's atomic fetch-and-add (maps::seq_next): core's atomics have no
// fetch_add on a BPF target without CAS.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod conntrack;
mod forward;
mod maps;
mod persist;
mod sched;
mod service;
mod station;
mod verdict;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::{fwd, martian_source, FlowKey, Reason, PROTO_ICMP, PROTO_ICMPV6, TAIL_ICMP};
use lb_ebpf::{
    helpers::ktime_coarse_ns,
    icmp,
    packet::{addr_words, Packet},
    parse::{parse, Parsed},
};

use crate::{
    conntrack::Conn,
    maps::{add_stats, count, StatsOf},
    service::Filter,
    verdict::{verdict, Out},
};

/// The director's entry point.
#[xdp]
pub fn xvs_director(ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new(ctx);
    let result = director(&mut pkt);
    verdict(&pkt, result)
}

#[inline(always)]
fn director(pkt: &mut Packet) -> Result<Out, Reason> {
    if !station::addressed_here(pkt) {
        return Err(Reason::PassNotOurMac);
    }
    let p = parse(pkt)?;
    if p.proto == PROTO_ICMP || p.proto == PROTO_ICMPV6 {
        // Rare and stack-hungry: handled by a program of its own (fresh stack).
        maps::tail_call(pkt.ctx(), TAIL_ICMP);
        return Err(Reason::DropTailCallMissing);
    }
    // One array read rules out almost all traffic that is not for a service.
    let port_service = match service::filter(&p) {
        Filter::Hit(port_service) => port_service,
        Filter::Miss => return not_a_service(pkt, &p),
    };
    let key = conntrack::flow_key(&p);
    let now = ktime_coarse_ns();
    // An established flow needs no service lookup: its entry names the service.
    let (conn, backend, new_conn) = match conntrack::lookup(&key, &p, now) {
        Some((conn, b)) => {
            count(Reason::ConnHit);
            (conn, b, false)
        }
        None => {
            let packed = new_flow(&key, &p, port_service, now);
            if packed & NEW_FLOW_ERR != 0 {
                return match Reason::from_index(packed as u32) {
                    // The filter's bit was another's: maybe a NAT reply after all.
                    Some(Reason::PassNotService) => not_a_service(pkt, &p),
                    reason => Err(reason.unwrap_or(Reason::DropBadBackend)),
                };
            }
            let conn = Conn::unpack(packed);
            let b = maps::backend(conn.backend).ok_or(Reason::DropBadBackend)?;
            (conn, b, true)
        }
    };
    let bytes = pkt.len() as u64;
    add_stats(StatsOf::Service, conn.service, new_conn, bytes);
    add_stats(StatsOf::Backend, conn.backend, new_conn, bytes);
    forward::forward(pkt, &p, None, &conn, backend)
}

/// A packet for no service: a NAT real server's reply goes to xvs_nat, the rest to the kernel.
#[inline(always)]
fn not_a_service(pkt: &Packet, p: &Parsed) -> Result<Out, Reason> {
    if forward::nat::maybe_reply(p) {
        return forward::nat::hand_off_reply(pkt);
    }
    Err(Reason::PassNotService)
}

/// Set in new_flow's result when it carries a Reason instead of (service id, backend id).
const NEW_FLOW_ERR: u64 = 1 << 63;

/// The new-flow path as a BPF subprogram of its own: its locals get their own stack frame
/// instead of crowding the fast path's under the 512-byte limit. A subprogram returns one
/// register: the new connection (Conn::pack), or NEW_FLOW_ERR | reason.
#[inline(never)]
fn new_flow(key: &FlowKey, p: &Parsed, port_service: bool, now: u64) -> u64 {
    match new_flow_inline(key, p, port_service, now) {
        Ok(conn) => conn.pack(),
        Err(reason) => NEW_FLOW_ERR | reason as u64,
    }
}

/// Service, then the client network's persistence template, else the service's scheduler
/// table (recording a template when the service is persistent); the choice goes into the
/// connection table.
#[inline(always)]
fn new_flow_inline(
    key: &FlowKey,
    p: &Parsed,
    port_service: bool,
    now: u64,
) -> Result<Conn, Reason> {
    let svc = service::lookup(p, port_service)?;
    // What the kernel would drop before IPVS sees it is never balanced (checked here, off the
    // established path: such a flow never gets an entry).
    if martian_source(p.family, addr_words(&p.src)) {
        return Err(Reason::DropMartianSource);
    }
    let pkey = persist::key(svc, p);
    let (id, backend) = match pkey.as_ref().and_then(|k| persist::lookup(k, svc, now)) {
        Some(found) => found,
        None => {
            let (id, backend) = sched::pick(svc, p)?;
            if let Some(pkey) = &pkey {
                persist::record(pkey, id, backend, now);
            }
            (id, backend)
        }
    };
    // A FULLNAT connection's entry holds the pool's size until xvs_nat gives it a port.
    let local = if backend.fwd == fwd::FULLNAT {
        svc.laddrs
    } else {
        0
    };
    conntrack::record(key, p, svc.id, id, backend, local, now);
    // A NAT connection's way back is recorded by xvs_nat (off this crowded stack).
    Ok(Conn {
        service: svc.id,
        backend: id,
        local,
        lport_be: 0,
        fresh: true,
    })
}

/// ICMP for a VIP, tail-called by the director: an error about a reply of a tracked flow goes to
/// that flow's real server (its TCP learns the path MTU or that the client is unreachable), as
/// IPVS relays them; any other ICMP is the kernel's.
#[xdp]
pub fn xvs_icmp(ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new(ctx);
    let result = icmp_relay(&mut pkt);
    verdict(&pkt, result)
}

#[inline(always)]
fn icmp_relay(pkt: &mut Packet) -> Result<Out, Reason> {
    let p = parse(pkt)?;
    let key = icmp::quoted_flow(pkt, &p).ok_or(Reason::PassIcmp)?;
    let Some(e) = maps::conn(&key) else {
        // Maybe about a client's packet a NAT real server received: the quote, from the
        // server's side, is the key of the connection's way back.
        if forward::nat::in_use() && maps::nat_reply(&key).is_some() {
            count(Reason::IcmpErrorForwarded);
            return forward::nat::hand_off_reply(pkt);
        }
        return Err(Reason::PassIcmp);
    };
    // A copy: an entry that owes client packets is re-inserted below, freeing this one.
    let e = *e;
    let backend = maps::backend(e.backend).ok_or(Reason::PassIcmp)?;
    if backend.generation != e.generation {
        return Err(Reason::PassIcmp);
    }
    // Spoofed ICMP errors must not earn a spoofed SYN's entry its reference either.
    conntrack::unreference(&key, &e);
    count(Reason::IcmpErrorForwarded);
    forward::forward(pkt, &p, Some(&key), &Conn::of(&e), backend)
}

/// TUN forwarding, tail-called by the director with the job in TUNNEL_JOB: encapsulates toward
/// the backend, or answers the client with ICMP too-big when the result would not fit the path.
#[xdp]
pub fn xvs_tunnel(ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new(ctx);
    let result = forward::tun::run(&mut pkt);
    verdict(&pkt, result)
}

/// NAT and FULLNAT forwarding, tail-called by the director with the job in NAT_JOB: a client's
/// packet to its real server, or a real server's reply back to its client.
#[xdp]
pub fn xvs_nat(ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new(ctx);
    let result = forward::nat::run(&mut pkt);
    verdict(&pkt, result)
}

/// An ICMP error about a NAT connection, tail-called by xvs_nat with the job in NAT_JOB.
#[xdp]
pub fn xvs_nat_icmp(ctx: XdpContext) -> u32 {
    let mut pkt = Packet::new(ctx);
    let result = forward::nat::run_icmp(&mut pkt);
    verdict(&pkt, result)
}
