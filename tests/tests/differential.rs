//! Differential test of the director's packet path: generated frames (every header length,
//! VLAN tags, fragments, every TCP flag byte, TOS / traffic class, ICMP and other protocols,
//! UDP without checksum, bytes overwritten at random (the destination MAC too: another host's
//! unicast frame is passed), frames cut short, frames too large for a tunnel or a route) run
//! through the real program with BPF_PROG_TEST_RUN and through a host model written from the
//! parsing and forwarding rules (`Model` below). Verdict, output bytes and the outcome counters
//! must agree for every frame (the expected reason counted once, no other verdict's reason at
//! all): anything dropped is counted under its reason, and nothing but a well-formed packet
//! for a service (or a NAT server's reply) is forwarded.
//!
//! The director holds one service per forwarding method, family and protocol, each with one real
//! server (so no scheduler choice matters): DR; TUN as IPIP, IP6IP6, 4in6, 6in4 and GUE (with
//! and without the outer checksum); NAT. The model computes what each must send from scratch:
//! the DR frame's MACs; the outer headers of a tunnelled packet field by field (RFC 2003 / 2473
//! and README's rules: DF, TTL 64, TOS copied, the FIB's source, the flow hash as GUE source
//! port and IPv6 flow label, the GUE checksum as if the inner checksums were right); a NAT
//! packet's new address and port with its checksums carried over (a bad input checksum stays
//! bad by the same amount; UDP/IPv4 without checksum keeps none); ICMP "too big" answers when
//! the route's MTU is exceeded. NAT replies come as (a clean client packet, then the real
//! server's reply, changed like any frame); the model keeps the set of NAT connections the
//! director has seen (timeouts are set out of reach, so none expires during a run), and the
//! service filter's bits, whose rare false positives send a stranger's packet down the reply
//! path. ICMP errors come as (a clean client packet, then an error about its flow, changed like
//! any frame): from a router on the client's path quoting a reply, which the model relays as the
//! flow's own packets go (DR; TUN with the flow's hash as outer port and label; NAT translated to
//! the real server: destination, quoted source address and port), or, for NAT, from the real
//! server or a router on its side quoting what the director sent it, translated toward the
//! client (quoted destination, and the source when the server sent it); the quoted IPv4 header's
//! and the ICMP checksum carried over, the quoted L4 checksum left. Every other ICMP message is
//! passed. Root required.
//!
//! Tunnel and NAT servers are on-link, behind a router with smaller route MTUs, or behind a
//! second interface (XDP_REDIRECT, its own MAC and source address). Not generated: FULLNAT and
//! NAT64. A new flow from a source the kernel refuses (IPv4 0/8, 127/8, multicast, broadcast;
//! IPv6 ::, ::1, multicast, IPv4-mapped) is dropped as drop_martian_source in every mode (the
//! test found NAT translating one from an IPv6 multicast source whenever a route to the real
//! server was cached). The director or the VIP as a source is not refused (the kernel would
//! refuse a local address; the data plane does not know the director's own).
//!
//! `XVS_DIFF_CASES` sets the number of cases (default 3,000, the CI run: well under a second
//! here); a developer can ask for more.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashSet},
    net::IpAddr,
};

use lb_common::{config_flags, filter::filter_bit, nat_reply_filter_proto, tuple_hash, Reason};
use lb_user::model::{Change, ForwardMethod, Scheduler, Tunnel, TunnelKind};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use xvs_tests::{
    packets::{frame, icmp_error as icmp_error_frame, pseudo, Flags, DIRECTOR_MAC, L4},
    progtest::{in_fib_ns, mac_text, real_server, service_key, verdict, Director},
};

const NS: &str = "xvsdiff-prog";
/// The director's interface and its MAC.
const D0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd0];
/// d0's addresses: the outer source the FIB picks for tunnels.
const D0_V4: &str = "198.51.100.1";
const D0_V6: &str = "2001:db8:100::1";
/// DR real servers (their MAC as the controller resolved it; DR asks no FIB).
const DR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const DR_RS4: &str = "198.51.100.11";
const DR_RS6: &str = "2001:db8:1::11";
/// On-link tunnel real servers (route MTU 1500, d0's).
const LINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x20];
const RS_LINK: &str = "198.51.100.20";
const RS_LINK6: &str = "2001:db8:100::20";
/// Real servers behind the router (tunnel and NAT): locked route MTUs 1300 (IPv4), 1400 (IPv6).
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const RS_ROUTED: &str = "198.51.100.70";
const RS_ROUTED6: &str = "2001:db8:200::70";
/// NAT real servers, on-link.
const NAT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x30];
const RS_NAT: &str = "198.51.100.30";
const RS_NAT6: &str = "2001:db8:100::30";
/// A second interface, d2, and a real server behind it (reached by XDP_REDIRECT).
const D2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd2];
const D2_V4: &str = "198.51.100.129";
const RS_D2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x82];
const RS_D2: &str = "198.51.100.130";
/// d0's MTU: the route MTU of the on-link servers and of the clients' route.
const LINK_MTU: u32 = 1500;

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:10::10";
/// Clients, routed through the router (NAT replies go back that way).
const CLIENT4: &str = "192.0.2.1";
const CLIENT6: &str = "2001:db8:2::1";
const GUE_PORT: u16 = 6080;

/// How a service's real server is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Dr,
    Ipip,
    Gue { csum: bool },
    Nat,
}

/// A service and its one real server.
#[derive(Clone, Copy, Debug)]
struct Svc {
    proto: u8,
    vip: &'static str,
    port: u16,
    rs: &'static str,
    rport: u16,
    mode: Mode,
}

const fn svc(proto: u8, vip: &'static str, port: u16, rs: &'static str, mode: Mode) -> Svc {
    Svc {
        proto,
        vip,
        port,
        rs,
        rport: port,
        mode,
    }
}

/// Every service of the director. TCP and UDP of one VIP share port 81 and 83: a frame whose
/// protocol was switched meets the other service.
const SERVICES: [Svc; 24] = [
    svc(6, VIP4, 80, DR_RS4, Mode::Dr),
    svc(17, VIP4, 53, DR_RS4, Mode::Dr),
    svc(6, VIP6, 80, DR_RS6, Mode::Dr),
    svc(17, VIP6, 53, DR_RS6, Mode::Dr),
    svc(6, VIP4, 81, RS_LINK, Mode::Ipip),
    svc(17, VIP4, 81, RS_ROUTED, Mode::Ipip),
    svc(6, VIP6, 81, RS_LINK6, Mode::Ipip),
    svc(17, VIP6, 81, RS_ROUTED6, Mode::Ipip),
    // 4in6 and 6in4.
    svc(6, VIP4, 82, RS_LINK6, Mode::Ipip),
    svc(6, VIP6, 82, RS_ROUTED, Mode::Ipip),
    svc(6, VIP4, 83, RS_LINK, Mode::Gue { csum: false }),
    svc(17, VIP4, 83, RS_ROUTED, Mode::Gue { csum: true }),
    svc(6, VIP6, 83, RS_ROUTED6, Mode::Gue { csum: false }),
    svc(17, VIP6, 83, RS_LINK6, Mode::Gue { csum: true }),
    // GUE 4 over 6 (the outer checksum always filled) and 6 over 4.
    svc(17, VIP4, 84, RS_LINK6, Mode::Gue { csum: false }),
    svc(6, VIP6, 84, RS_LINK, Mode::Gue { csum: true }),
    Svc {
        rport: 8080,
        ..svc(6, VIP4, 8000, RS_NAT, Mode::Nat)
    },
    Svc {
        rport: 5353,
        ..svc(17, VIP4, 5300, RS_NAT, Mode::Nat)
    },
    Svc {
        rport: 8080,
        ..svc(6, VIP6, 8000, RS_NAT6, Mode::Nat)
    },
    Svc {
        rport: 5353,
        ..svc(17, VIP6, 5300, RS_NAT6, Mode::Nat)
    },
    // Out the second interface.
    svc(17, VIP4, 85, RS_D2, Mode::Gue { csum: true }),
    Svc {
        rport: 8082,
        ..svc(6, VIP4, 8002, RS_D2, Mode::Nat)
    },
    // Behind the router, past smaller route MTUs.
    Svc {
        rport: 8081,
        ..svc(6, VIP4, 8001, RS_ROUTED, Mode::Nat)
    },
    Svc {
        rport: 5354,
        ..svc(17, VIP6, 5301, RS_ROUTED6, Mode::Nat)
    },
];

/// The namespace's routes and neighbours (what the program's FIB lookups see).
fn script() -> String {
    format!(
        "ip link add d0 address {d0} type veth peer name d1
        ip link add d2 address {d2} type veth peer name d3 address {rs2}
        for l in d0 d1 d2 d3; do ip link set $l up; done
        ip addr add {D2_V4}/26 dev d2
        ip neigh add {RS_D2} lladdr {rs2} dev d2 nud permanent
        ip addr add {D0_V4}/26 dev d0
        ip addr add {D0_V6}/64 dev d0 nodad
        ip neigh add {RS_LINK} lladdr {link} dev d0 nud permanent
        ip neigh add {RS_LINK6} lladdr {link} dev d0 nud permanent
        ip neigh add {RS_NAT} lladdr {nat} dev d0 nud permanent
        ip neigh add {RS_NAT6} lladdr {nat} dev d0 nud permanent
        ip neigh add 198.51.100.62 lladdr {gw} dev d0 nud permanent
        ip neigh add 2001:db8:100::fe lladdr {gw} dev d0 nud permanent
        ip route add 198.51.100.64/26 via 198.51.100.62 mtu lock 1300
        ip -6 route add 2001:db8:200::/64 via 2001:db8:100::fe mtu lock 1400
        ip route add 192.0.2.0/24 via 198.51.100.62
        ip -6 route add 2001:db8:2::/64 via 2001:db8:100::fe
        sysctl -qw net.ipv4.conf.all.forwarding=1 net.ipv6.conf.all.forwarding=1",
        d0 = mac_text(&D0_MAC),
        d2 = mac_text(&D2_MAC),
        rs2 = mac_text(&RS_D2_MAC),
        link = mac_text(&LINK_MAC),
        nat = mac_text(&NAT_MAC),
        gw = mac_text(&GW_MAC),
    )
}

/// Where the FIB sends a packet toward a tunnel or NAT real server.
struct Hop {
    /// The next hop's MAC and the outgoing interface's.
    macs: ([u8; 6], [u8; 6]),
    /// The route's MTU.
    mtu: u32,
    /// The source address the FIB picks (IPv4, IPv6).
    src: (&'static str, &'static str),
    /// Out another interface than the frame came in by (XDP_REDIRECT).
    redirect: bool,
}

/// The namespace's routes toward the real servers.
fn route(rs: &str) -> Hop {
    let d0 = |dmac, mtu| Hop {
        macs: (dmac, D0_MAC),
        mtu,
        src: (D0_V4, D0_V6),
        redirect: false,
    };
    match rs {
        RS_LINK | RS_LINK6 => d0(LINK_MAC, LINK_MTU),
        RS_NAT | RS_NAT6 => d0(NAT_MAC, LINK_MTU),
        RS_ROUTED => d0(GW_MAC, 1300),
        RS_ROUTED6 => d0(GW_MAC, 1400),
        RS_D2 => Hop {
            macs: (RS_D2_MAC, D2_MAC),
            mtu: LINK_MTU,
            src: (D2_V4, ""),
            redirect: true,
        },
        other => panic!("no route for {other} in the model"),
    }
}

/// The next hop toward a NAT connection's client: the clients' prefixes are routed through the
/// router. Anything else gets no route in the model (a reply to another address needs a client
/// packet from that address first, whose source a random write changed, and a reply changed to
/// the same address: not met in practice).
fn client_route(dst: &[u8]) -> Option<[u8; 6]> {
    let in_prefix = match dst.len() {
        4 => dst[..3] == [192, 0, 2],
        _ => dst[..8] == bytes(CLIENT6)[..8],
    };
    in_prefix.then_some(GW_MAC)
}

/// The services, and the settings xvsd would write.
fn director(d: &mut Director) {
    d.mac(DR_RS4, DR_MAC);
    d.mac(DR_RS6, DR_MAC);
    let mut changes = Vec::new();
    for s in SERVICES {
        let protocol = if s.proto == 6 {
            lb_user::model::Protocol::Tcp
        } else {
            lb_user::model::Protocol::Udp
        };
        let key = service_key(protocol, s.vip, s.port);
        let forward = match s.mode {
            Mode::Dr => ForwardMethod::Dr,
            Mode::Ipip => ForwardMethod::Tunnel(Tunnel {
                kind: TunnelKind::Ipip,
                port: 0,
                csum: false,
            }),
            Mode::Gue { csum } => ForwardMethod::Tunnel(Tunnel {
                kind: TunnelKind::Gue,
                port: GUE_PORT,
                csum,
            }),
            Mode::Nat => ForwardMethod::Nat,
        };
        changes.push(Change::add_service(key, Scheduler::Rr));
        changes.push(Change::AddReal {
            service: key,
            real: real_server(s.rs, s.rport, forward),
        });
    }
    d.apply(&changes);
    // NAT in use (as xvsd sets it), and no connection expires during a run: whether a reply
    // belongs to a connection is then the model's set, not a clock's.
    let mut c = d.dp.current_config().unwrap();
    c.flags |= config_flags::NAT;
    let never = 1 << 60;
    c.tcp_timeout_ns = never;
    c.tcp_fin_timeout_ns = never;
    c.udp_timeout_ns = never;
    c.tcp_syn_timeout_ns = never;
    c.tcp_close_timeout_ns = never;
    d.dp.set_config(c).unwrap();
}

/// What the director must do with a frame.
#[derive(Debug, PartialEq, Eq)]
struct Expect {
    verdict: u32,
    reason: Reason,
    out: Vec<u8>,
    /// A reason counted besides the verdict's (a GUE packet whose checksum stays zero).
    also: Option<Reason>,
}

impl Expect {
    fn new(verdict: u32, reason: Reason, out: Vec<u8>) -> Expect {
        Expect {
            verdict,
            reason,
            out,
            also: None,
        }
    }
}

/// Whether the kernel's FIB refuses to route a packet from this source whatever its
/// destination: an IPv6 multicast address (IPv4 ones, and every other martian, are routed).
fn fib_refuses(src: &[u8]) -> bool {
    src.len() == 16 && src[0] == 0xff
}

/// Whether a new flow from this source is refused (lb_common::martian_source), written out
/// here from the kernel's rules rather than called.
fn martian(src: &[u8]) -> bool {
    match *src {
        [a, _, _, _] => a == 0 || a == 127 || a >> 4 == 0xe || src == [255; 4],
        _ => {
            src[0] == 0xff
                || (src[..10] == [0; 10]
                    && (src[10..12] == [0xff, 0xff] || (src[10..15] == [0; 5] && src[15] <= 1)))
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn bytes(a: &str) -> Vec<u8> {
    match a.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// An address in the data plane's 16-byte form (IPv4 in the first four bytes).
fn wide(a: &[u8]) -> [u8; 16] {
    let mut w = [0u8; 16];
    w[..a.len()].copy_from_slice(a);
    w
}

/// RFC 1071: the ones-complement sum of big-endian 16-bit words (an odd byte padded), unfolded.
fn sum(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64)
        .sum()
}

/// Folds a sum to 16 bits with end-around carries.
fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The checksum field over `data` (its own field zeroed).
fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// A checksum field after the data it covers changed from `old` to `new` (each given with the
/// field zeroed), carried over as an incremental update does: the stored value's error against
/// a correct checksum of `old` stays, so a correct input gives the correct checksum of `new`
/// and a bad one stays bad by the same amount.
fn carried(stored: u16, old: &[u8], new: &[u8]) -> u16 {
    // stored = correct(old) - error, in ones-complement: ~stored - sum(old) = error.
    !fold((!stored) as u64 + (!fold(sum(old))) as u64 + sum(new))
}

/// The fields of a TCP/UDP frame the model works with.
struct Hdr {
    v6: bool,
    l3: usize,
    l4: usize,
    proto: u8,
    src: Vec<u8>,
    dst: Vec<u8>,
    sport: u16,
    dport: u16,
    /// IPv4 TOS / IPv6 traffic class.
    tos: u8,
}

impl Hdr {
    /// Offset of the L4 checksum.
    fn check_at(&self) -> usize {
        self.l4
            + match self.proto {
                6 => 16,
                17 => 6,
                _ => 2,
            }
    }

    /// The IP packet's length as its header says (what a route's MTU is compared with).
    fn ip_len(&self, b: &[u8]) -> u32 {
        if self.v6 {
            be16(b, self.l3 + 4) as u32 + 40
        } else {
            be16(b, self.l3 + 2) as u32
        }
    }
}

/// The parsing rules: a TCP/UDP/ICMP frame's fields, or what happens to any other frame.
fn parse(b: &[u8]) -> Result<Hdr, Expect> {
    let pass = |reason| Expect::new(verdict::PASS, reason, b.to_vec());
    let drop = |reason| Expect::new(verdict::DROP, reason, b.to_vec());
    let is_vlan = |t: u16| t == 0x8100 || t == 0x88a8;
    if b.len() < 14 {
        return Err(drop(Reason::DropTruncatedL2));
    }
    let (mut ether_type, mut l3) = (be16(b, 12), 14);
    if is_vlan(ether_type) {
        if b.len() < 18 {
            return Err(drop(Reason::DropTruncatedL2));
        }
        ether_type = be16(b, 16);
        if is_vlan(ether_type) {
            return Err(pass(Reason::PassStackedVlan));
        }
        l3 = 18;
    }
    // `end`: where the IP packet ends by its header's length (padding may follow).
    let (v6, proto, src, dst, l4, tos, end) = match ether_type {
        0x0800 => {
            if b.len() < l3 + 20 {
                return Err(drop(Reason::DropMalformedL3));
            }
            let ihl = (b[l3] & 0x0f) as usize;
            let tot_len = be16(b, l3 + 2) as usize;
            if b[l3] >> 4 != 4
                || ihl < 5
                || b.len() < l3 + ihl * 4
                || tot_len < ihl * 4
                || b.len() < l3 + tot_len
            {
                return Err(drop(Reason::DropMalformedL3));
            }
            if be16(b, l3 + 6) & 0x3fff != 0 {
                return Err(pass(Reason::PassFragment));
            }
            let proto = b[l3 + 9];
            if ![6, 17, 1].contains(&proto) {
                return Err(pass(Reason::PassOtherProto));
            }
            let (src, dst) = (b[l3 + 12..l3 + 16].to_vec(), b[l3 + 16..l3 + 20].to_vec());
            (
                false,
                proto,
                src,
                dst,
                l3 + ihl * 4,
                b[l3 + 1],
                l3 + tot_len,
            )
        }
        0x86dd => {
            if b.len() < l3 + 40 {
                return Err(drop(Reason::DropMalformedL3));
            }
            let end = l3 + 40 + be16(b, l3 + 4) as usize;
            if b[l3] >> 4 != 6 || b.len() < end {
                return Err(drop(Reason::DropMalformedL3));
            }
            let next = b[l3 + 6];
            if ![6, 17, 58].contains(&next) {
                return Err(pass(if [0, 43, 44, 60, 51, 135].contains(&next) {
                    Reason::PassIpv6ExtHeader
                } else {
                    Reason::PassOtherProto
                }));
            }
            let (src, dst) = (b[l3 + 8..l3 + 24].to_vec(), b[l3 + 24..l3 + 40].to_vec());
            let tos = (b[l3] << 4) | (b[l3 + 1] >> 4);
            (true, next, src, dst, l3 + 40, tos, end)
        }
        _ => return Err(pass(Reason::PassNonIp)),
    };
    let icmp = proto == 1 || proto == 58;
    let min = if proto == 6 { 20 } else { 8 };
    if !icmp && b.len() < l4 + min {
        return Err(drop(Reason::DropMalformedL4));
    }
    // TCP's header and UDP's datagram within the IP packet.
    let l4_len = match proto {
        6 => (b[l4 + 12] >> 4) as usize * 4,
        17 => be16(b, l4 + 4) as usize,
        _ => min,
    };
    if !icmp && (l4_len < min || l4 + l4_len > end) {
        return Err(drop(Reason::DropMalformedL4));
    }
    Ok(Hdr {
        v6,
        l3,
        l4,
        proto,
        src,
        dst,
        // ICMP has no ports (and its header may be cut).
        sport: if icmp { 0 } else { be16(b, l4) },
        dport: if icmp { 0 } else { be16(b, l4 + 2) },
        tos,
    })
}

/// The host model: the director's decisions from the frame's bytes and the connections it saw.
#[derive(Default)]
struct Model {
    /// Connections the director recorded: (service index, client address, client port).
    conns: HashSet<(usize, Vec<u8>, u16)>,
    /// The service filter's bits (services, and NAT servers' reply sources).
    filter: HashSet<u32>,
}

impl Model {
    fn new() -> Model {
        let mut filter = HashSet::new();
        for s in SERVICES {
            filter.insert(filter_bit(&wide(&bytes(s.vip)), s.port.to_be(), s.proto));
            if s.mode == Mode::Nat {
                filter.insert(filter_bit(
                    &wide(&bytes(s.rs)),
                    s.rport.to_be(),
                    nat_reply_filter_proto(s.proto),
                ));
            }
        }
        Model {
            conns: HashSet::new(),
            filter,
        }
    }

    fn expect(&mut self, b: &[u8]) -> Expect {
        // The ingress interface answers for DIRECTOR_MAC (its LINK_MACS slot): another host's
        // unicast frame is the kernel's, whatever it holds.
        if b.len() >= 14 && b[0] & 1 == 0 && b[0..6] != DIRECTOR_MAC {
            return Expect::new(verdict::PASS, Reason::PassNotOurMac, b.to_vec());
        }
        let h = match parse(b) {
            Ok(h) => h,
            Err(e) => return e,
        };
        if h.proto == 1 || h.proto == 58 {
            return self.icmp(b, &h);
        }
        let found = SERVICES
            .iter()
            .position(|s| s.proto == h.proto && bytes(s.vip) == h.dst && s.port == h.dport);
        let Some(i) = found else {
            return self.not_a_service(b, &h);
        };
        // A source the kernel would refuse never gets a connection (so this is a new flow).
        if martian(&h.src) {
            return Expect::new(verdict::DROP, Reason::DropMartianSource, b.to_vec());
        }
        // A new flow gets its connection before anything else can fail.
        self.conns.insert((i, h.src.clone(), h.sport));
        let s = SERVICES[i];
        match s.mode {
            Mode::Dr => {
                // Only the Ethernet addresses change; the frame's destination (ours) becomes
                // its source.
                let mut out = b.to_vec();
                out[6..12].copy_from_slice(&b[0..6]);
                out[0..6].copy_from_slice(&DR_MAC);
                Expect::new(verdict::TX, Reason::TxDr, out)
            }
            Mode::Ipip | Mode::Gue { .. } => tunnel(b, &h, &s, flow_hash(&h)),
            Mode::Nat => {
                // The way back is recorded with the connection, before the route is asked.
                let hop = route(s.rs);
                if h.ip_len(b) > hop.mtu {
                    return too_big(b, &h, hop.mtu);
                }
                let out = rewrite(b, &h, &h.src, h.sport, &bytes(s.rs), s.rport, hop.macs);
                if hop.redirect {
                    Expect::new(verdict::REDIRECT, Reason::RedirectNat, out)
                } else {
                    Expect::new(verdict::TX, Reason::TxNat, out)
                }
            }
        }
    }

    /// ICMP: an error quoting a reply of a known flow (VIP:vport -> client:cport) follows the
    /// flow to its real server; any other ICMP is the kernel's.
    fn icmp(&mut self, b: &[u8], h: &Hdr) -> Expect {
        let pass = Expect::new(verdict::PASS, Reason::PassIcmp, b.to_vec());
        // The ICMP header, then the quoted IP header.
        let inner = h.l4 + 8;
        if b.len() < inner {
            return pass;
        }
        let ty = b[h.l4];
        let (proto, vip, client, quoted_l4) = if h.v6 {
            // Destination unreachable, packet too big, time exceeded.
            if ![1, 2, 3].contains(&ty) || b.len() < inner + 40 {
                return pass;
            }
            let (src, dst) = (&b[inner + 8..inner + 24], &b[inner + 24..inner + 40]);
            (b[inner + 6], src, dst, inner + 40)
        } else {
            // Destination unreachable, source quench, time exceeded.
            if ![3, 4, 11].contains(&ty) || b.len() < inner + 20 {
                return pass;
            }
            let ihl = (b[inner] & 0x0f) as usize;
            if b[inner] >> 4 != 4 || ihl < 5 {
                return pass;
            }
            let (src, dst) = (&b[inner + 12..inner + 16], &b[inner + 16..inner + 20]);
            (b[inner + 9], src, dst, inner + ihl * 4)
        };
        if ![6, 17].contains(&proto) || b.len() < quoted_l4 + 4 {
            return pass;
        }
        let (vport, cport) = (be16(b, quoted_l4), be16(b, quoted_l4 + 2));
        let found = (0..SERVICES.len()).find(|&i| {
            let s = SERVICES[i];
            s.proto == proto
                && bytes(s.vip) == vip
                && s.port == vport
                && self.conns.contains(&(i, client.to_vec(), cport))
        });
        let quote = (inner, quoted_l4);
        let Some(i) = found else {
            // Maybe about a client's packet a NAT server received: the quote is then client:cport
            // -> RIP:rport (`vip` the client, `client` the server: the names are a reply's).
            let back = (0..SERVICES.len()).find(|&i| {
                let s = SERVICES[i];
                s.mode == Mode::Nat
                    && s.proto == proto
                    && bytes(s.rs) == client
                    && s.rport == cport
                    && self.conns.contains(&(i, vip.to_vec(), vport))
            });
            let Some(i) = back else {
                return pass;
            };
            let s = SERVICES[i];
            // Toward the client, about its packet to the VIP; from the VIP when the server
            // itself sent it.
            let from_server = h.src == bytes(s.rs);
            let client = vip.to_vec();
            let vip = bytes(s.vip);
            let e = match client_route(&client) {
                Some(dmac) if h.ip_len(b) <= LINK_MTU && !fib_refuses(&h.src) => {
                    let out = rewrite_icmp(
                        b,
                        h,
                        quote,
                        [from_server.then_some(&vip[..]), None],
                        [None, Some((&vip[..], s.port))],
                        (dmac, D0_MAC),
                    );
                    Expect::new(verdict::TX, Reason::TxNatReply, out)
                }
                // No route, or too big for it: an error is not worth an error.
                _ => Expect::new(verdict::DROP, Reason::DropNatNoRoute, b.to_vec()),
            };
            return Expect {
                also: Some(Reason::IcmpErrorForwarded),
                ..e
            };
        };
        let s = SERVICES[i];
        let mut e = match s.mode {
            Mode::Dr => {
                let mut out = b.to_vec();
                out[6..12].copy_from_slice(&b[0..6]);
                out[0..6].copy_from_slice(&DR_MAC);
                Expect::new(verdict::TX, Reason::TxDr, out)
            }
            // Encapsulated with the flow's hash, not the error's.
            Mode::Ipip | Mode::Gue { .. } => {
                let hash = tuple_hash(
                    &wide(client),
                    &wide(vip),
                    cport.to_be(),
                    vport.to_be(),
                    proto,
                );
                tunnel(b, h, &s, hash)
            }
            // To the real server, about what it sent (RIP:rport -> client).
            Mode::Nat => {
                let (rs, hop) = (bytes(s.rs), route(s.rs));
                // An ICMP error's route is never cached: the FIB's word is final.
                if h.ip_len(b) > hop.mtu || fib_refuses(&h.src) {
                    Expect::new(verdict::DROP, Reason::DropNatNoRoute, b.to_vec())
                } else {
                    let out = rewrite_icmp(
                        b,
                        h,
                        quote,
                        [None, Some(&rs[..])],
                        [Some((&rs[..], s.rport)), None],
                        hop.macs,
                    );
                    if hop.redirect {
                        Expect::new(verdict::REDIRECT, Reason::RedirectNat, out)
                    } else {
                        Expect::new(verdict::TX, Reason::TxNat, out)
                    }
                }
            }
        };
        e.also = Some(Reason::IcmpErrorForwarded);
        e
    }

    /// A frame for no service: a NAT server's reply when the filter has its source's bit.
    fn not_a_service(&mut self, b: &[u8], h: &Hdr) -> Expect {
        let pass = |reason| Expect::new(verdict::PASS, reason, b.to_vec());
        let src = wide(&h.src);
        let fp = nat_reply_filter_proto(h.proto);
        let maybe = self.filter.contains(&filter_bit(&src, h.sport.to_be(), fp))
            || self.filter.contains(&filter_bit(&src, 0, fp));
        if !maybe {
            return pass(Reason::PassNotService);
        }
        let known = SERVICES.iter().position(|s| {
            s.mode == Mode::Nat && s.proto == h.proto && bytes(s.rs) == h.src && s.rport == h.sport
        });
        let Some(i) = known.filter(|&i| self.conns.contains(&(i, h.dst.clone(), h.dport))) else {
            return pass(Reason::PassNatReplyUnknown);
        };
        let s = SERVICES[i];
        let Some(dmac) = client_route(&h.dst) else {
            return Expect::new(verdict::DROP, Reason::DropNatNoRoute, b.to_vec());
        };
        if h.ip_len(b) > LINK_MTU {
            return too_big(b, h, LINK_MTU);
        }
        let out = rewrite(b, h, &bytes(s.vip), s.port, &h.dst, h.dport, (dmac, D0_MAC));
        Expect::new(verdict::TX, Reason::TxNatReply, out)
    }
}

/// The frame with source and destination (address and port) replaced, its IPv4 header and L4
/// checksums carried over, and sent to `macs` (destination, source).
fn rewrite(
    b: &[u8],
    h: &Hdr,
    src: &[u8],
    sport: u16,
    dst: &[u8],
    dport: u16,
    (dmac, smac): ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let mut out = b.to_vec();
    out[0..6].copy_from_slice(&dmac);
    out[6..12].copy_from_slice(&smac);
    let (s, d) = if h.v6 {
        (h.l3 + 8, h.l3 + 24)
    } else {
        (h.l3 + 12, h.l3 + 16)
    };
    out[s..s + src.len()].copy_from_slice(src);
    out[d..d + dst.len()].copy_from_slice(dst);
    out[h.l4..h.l4 + 2].copy_from_slice(&sport.to_be_bytes());
    out[h.l4 + 2..h.l4 + 4].copy_from_slice(&dport.to_be_bytes());
    let zeroed = |f: &[u8], from: usize, to: usize, at: usize| {
        let mut v = f[from..to].to_vec();
        v[at - from] = 0;
        v[at - from + 1] = 0;
        v
    };
    if !h.v6 {
        let (end, at) = (h.l4, h.l3 + 10);
        let c = carried(
            be16(b, at),
            &zeroed(b, h.l3, end, at),
            &zeroed(&out, h.l3, end, at),
        );
        out[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let at = h.check_at();
    let stored = be16(b, at);
    if h.proto == 17 && !h.v6 && stored == 0 {
        // Sent without a checksum: none after translation either.
        return out;
    }
    let len = b.len() - h.l4;
    let old = [
        pseudo(&h.src, &h.dst, h.proto, len),
        zeroed(b, h.l4, b.len(), at),
    ]
    .concat();
    let new = [
        pseudo(src, dst, h.proto, len),
        zeroed(&out, h.l4, out.len(), at),
    ]
    .concat();
    let mut c = carried(stored, &old, &new);
    if h.proto == 17 && c == 0 {
        // A computed zero is sent as all ones (zero means "none").
        c = 0xffff;
    }
    out[at..at + 2].copy_from_slice(&c.to_be_bytes());
    out
}

/// An ICMP error translated: the outer [source, destination] and the quoted packet's [source,
/// destination] (address and port) replaced where given, with the checksums carried over (the
/// outer IPv4 header's when it changed, the quoted IPv4 header's, the ICMP checksum, ICMPv6's
/// pseudo-header included); the quoted L4 checksum is left as it was. `quote`: the quoted IP
/// and L4 headers' offsets.
fn rewrite_icmp(
    b: &[u8],
    h: &Hdr,
    (q3, q4): (usize, usize),
    outer: [Option<&[u8]>; 2],
    quoted: [Option<(&[u8], u16)>; 2],
    (dmac, smac): ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let mut out = b.to_vec();
    out[0..6].copy_from_slice(&dmac);
    out[6..12].copy_from_slice(&smac);
    // Source and destination address offsets of an IP header at `l3`.
    let addrs = |l3: usize| {
        if h.v6 {
            [l3 + 8, l3 + 24]
        } else {
            [l3 + 12, l3 + 16]
        }
    };
    let zeroed = |f: &[u8], from: usize, to: usize, at: usize| {
        let mut v = f[from..to].to_vec();
        v[at - from..at - from + 2].fill(0);
        v
    };
    for (at, a) in addrs(h.l3).into_iter().zip(outer) {
        if let Some(a) = a {
            out[at..at + a.len()].copy_from_slice(a);
        }
    }
    if !h.v6 && outer.iter().any(Option::is_some) {
        let at = h.l3 + 10;
        let c = carried(
            be16(b, at),
            &zeroed(b, h.l3, h.l4, at),
            &zeroed(&out, h.l3, h.l4, at),
        );
        out[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    for ((at, port_at), end) in addrs(q3).into_iter().zip([q4, q4 + 2]).zip(quoted) {
        if let Some((a, port)) = end {
            out[at..at + a.len()].copy_from_slice(a);
            out[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
        }
    }
    if !h.v6 {
        let at = q3 + 10;
        let c = carried(
            be16(b, at),
            &zeroed(b, q3, q4, at),
            &zeroed(&out, q3, q4, at),
        );
        out[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let at = h.l4 + 2;
    let message = |f: &[u8]| {
        let [s, d] = addrs(h.l3);
        let body = zeroed(f, h.l4, f.len(), at);
        if h.v6 {
            let len = f.len() - h.l4;
            [pseudo(&f[s..s + 16], &f[d..d + 16], 58, len), body].concat()
        } else {
            body
        }
    };
    let c = carried(be16(b, at), &message(b), &message(&out));
    out[at..at + 2].copy_from_slice(&c.to_be_bytes());
    out
}

/// The flow's hash: GUE's source port and the IPv6 flow label spread flows by it.
fn flow_hash(h: &Hdr) -> u32 {
    tuple_hash(
        &wide(&h.src),
        &wide(&h.dst),
        h.sport.to_be(),
        h.dport.to_be(),
        h.proto,
    )
}

/// TUN: the frame's IP packet in an outer IPv4 (RFC 2003) or IPv6 (RFC 2473) header, with GUE's
/// UDP and 4-byte header between them, toward the real server; an ICMP answer when the result
/// would exceed the route's MTU.
fn tunnel(b: &[u8], h: &Hdr, s: &Svc, hash: u32) -> Expect {
    let rs = bytes(s.rs);
    let outer_v6 = rs.len() == 16;
    let gue = matches!(s.mode, Mode::Gue { .. });
    let over = if outer_v6 { 40 } else { 20 } + if gue { 8 + 4 } else { 0 };
    let inner = &b[h.l3..];
    let hop = route(s.rs);
    if (inner.len() + over) as u32 > hop.mtu {
        return too_big(b, h, hop.mtu - over as u32);
    }
    // IPIP / 6in4 (41) by the inner packet's family.
    let inner_proto: u8 = if h.v6 { 41 } else { 4 };
    let src = bytes(if outer_v6 { hop.src.1 } else { hop.src.0 });
    let mut also = None;
    let payload = if gue {
        let udp_len = 8 + 4 + inner.len();
        let mut l4 = Vec::with_capacity(udp_len);
        l4.extend_from_slice(&(0xc000 | (hash as u16 & 0x3fff)).to_be_bytes());
        l4.extend_from_slice(&GUE_PORT.to_be_bytes());
        l4.extend_from_slice(&(udp_len as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        // GUE variant 0: version 0, C 0, no options, the inner protocol, no flags.
        l4.extend_from_slice(&[0, inner_proto, 0, 0]);
        let csum = outer_v6 || s.mode == Mode::Gue { csum: true };
        let udp_v4_zero = h.proto == 17 && !h.v6 && be16(b, h.check_at()) == 0;
        if csum && udp_v4_zero {
            // The inner payload's sum is not known from the headers: no checksum (counted).
            also = Some(Reason::TunZeroCsum);
        } else if csum {
            // Over the packet as the sender meant it: the checksum is derived from the inner
            // headers (the kernel's LCO), so it is right for an inner packet whose own
            // checksums are.
            let datagram = [&pseudo(&src, &rs, 17, udp_len)[..], &l4, &checked(b, h)].concat();
            let c = match checksum(&datagram) {
                0 => 0xffff,
                c => c,
            };
            l4[6..8].copy_from_slice(&c.to_be_bytes());
        }
        l4.extend_from_slice(inner);
        l4
    } else {
        inner.to_vec()
    };
    let next = if gue { 17 } else { inner_proto };
    let mut out = Vec::with_capacity(b.len() + over);
    out.extend_from_slice(&hop.macs.0);
    out.extend_from_slice(&hop.macs.1);
    if h.l3 == 18 {
        // The VLAN tag stays in front of the outer header.
        out.extend_from_slice(&b[12..16]);
    }
    if outer_v6 {
        out.extend_from_slice(&[0x86, 0xdd]);
        let label = hash & 0xf_ffff;
        out.extend_from_slice(&[
            0x60 | (h.tos >> 4),
            (h.tos << 4) | (label >> 16) as u8,
            (label >> 8) as u8,
            label as u8,
        ]);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(&[next, 64]);
        out.extend_from_slice(&src);
        out.extend_from_slice(&rs);
    } else {
        out.extend_from_slice(&[0x08, 0x00]);
        // Version 4, IHL 5, TOS copied, ID 0, DF (never fragmented: the client hears of the MTU
        // instead), TTL 64.
        let mut ip = vec![0x45, h.tos];
        ip.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, next, 0, 0]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&rs);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&ip);
    }
    out.extend_from_slice(&payload);
    Expect {
        also,
        ..if hop.redirect {
            Expect::new(verdict::REDIRECT, Reason::RedirectTunnel, out)
        } else {
            Expect::new(verdict::TX, Reason::TxTunnel, out)
        }
    }
}

/// The frame's IP packet with a correct IPv4 header checksum and L4 checksum (over the bytes it
/// has): what a GUE checksum derived from the inner headers is right for.
fn checked(b: &[u8], h: &Hdr) -> Vec<u8> {
    let mut ip = b[h.l3..].to_vec();
    let (l4, at) = (h.l4 - h.l3, h.check_at() - h.l3);
    if !h.v6 {
        ip[10..12].fill(0);
        let c = checksum(&ip[..l4]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    ip[at..at + 2].fill(0);
    let seg = if h.proto == 1 {
        // ICMPv4's checksum has no pseudo-header.
        ip[l4..].to_vec()
    } else {
        [
            pseudo(&h.src, &h.dst, h.proto, ip.len() - l4),
            ip[l4..].to_vec(),
        ]
        .concat()
    };
    let c = checksum(&seg);
    ip[at..at + 2].copy_from_slice(&c.to_be_bytes());
    ip
}

/// The ICMP "fragmentation needed" (IPv4) / "packet too big" (IPv6, at least 1280) answer from
/// the packet's destination back to its source, advertising `mtu`, quoting the first 128 / 256
/// bytes of the packet; dropped when it is shorter than that or is ICMP.
fn too_big(b: &[u8], h: &Hdr, mtu: u32) -> Expect {
    let quote_len = if h.v6 { 256 } else { 128 };
    // ICMP errors are never answered with ICMP.
    if ![6, 17].contains(&h.proto) || b.len() < h.l3 + quote_len {
        return Expect::new(verdict::DROP, Reason::DropTooBigUnquotable, b.to_vec());
    }
    let quote = &b[h.l3..h.l3 + quote_len];
    let mut out = Vec::new();
    out.extend_from_slice(&b[6..12]);
    out.extend_from_slice(&b[0..6]);
    if h.l3 == 18 {
        out.extend_from_slice(&b[12..16]);
    }
    if h.v6 {
        out.extend_from_slice(&[0x86, 0xdd]);
        let len = 8 + quote_len;
        let mut icmp = vec![2, 0, 0, 0];
        icmp.extend_from_slice(&mtu.max(1280).to_be_bytes());
        icmp.extend_from_slice(quote);
        let c = checksum(&[pseudo(&h.dst, &h.src, 58, len), icmp.clone()].concat());
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&[0x60, 0, 0, 0]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&[58, 64]);
        out.extend_from_slice(&h.dst);
        out.extend_from_slice(&h.src);
        out.extend_from_slice(&icmp);
    } else {
        out.extend_from_slice(&[0x08, 0x00]);
        let mut icmp = vec![3, 4, 0, 0, 0, 0];
        icmp.extend_from_slice(&(mtu.clamp(68, 0xffff) as u16).to_be_bytes());
        icmp.extend_from_slice(quote);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        // No DF, TOS 0, TTL 64.
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
        ip.extend_from_slice(&h.dst);
        ip.extend_from_slice(&h.src);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&ip);
        out.extend_from_slice(&icmp);
    }
    Expect::new(verdict::TX, Reason::TxIcmpTooBig, out)
}

/// How a case is made: a well-formed TCP or UDP frame toward a service (or its VIP's neighbour),
/// then changed; or a clean client packet, then a changed NAT reply or ICMP error about its flow.
#[derive(Debug, Clone)]
struct Recipe {
    /// The service the frame is made for (family, protocol, VIP and port).
    svc: usize,
    to_vip: bool,
    /// Another destination port.
    port: Option<u16>,
    /// TCP instead of UDP or the other way round.
    switch_proto: bool,
    /// NAT services: a clean client packet, then the real server's reply made from the rest
    /// (without `to_vip`: a reply alone, to a port no client used; with `icmp_error`: the error
    /// comes from the server's side).
    reply: bool,
    /// A clean client packet, then an ICMP error about its flow: from a router on the client's
    /// path, quoting a reply; or (NAT, `reply`) from the real server or a router on its side,
    /// quoting the client's packet as the server got it.
    icmp_error: bool,
    sport: u16,
    tcp_flags: u8,
    tos: u8,
    /// The UDP checksum.
    udp_csum: UdpCsum,
    vlan_tags: u8,
    /// Replaces the IP protocol / next header (ICMP, other protocols, extension headers).
    proto: Option<u8>,
    payload: usize,
    /// Bytes overwritten: (position in the frame, modulo its length; value).
    writes: Vec<(usize, u8)>,
    /// The frame cut to this many bytes (14 or more: BPF_PROG_TEST_RUN refuses a frame shorter
    /// than an Ethernet header, as no driver delivers one).
    cut: Option<usize>,
    /// A client packet from a source the kernel refuses (an index into MARTIANS4 / MARTIANS6).
    martian: Option<usize>,
}

/// Sources no connection comes from, and last in each list ones that are not (240/4 is routed,
/// ::2 is unicast): next to them. Not fe80::/10: NAT routes a link-local source only from a
/// cached route (the FIB refuses it), so its outcome depends on the clock.
const MARTIANS4: [&str; 6] = [
    "0.0.0.0",
    "127.0.0.1",
    "224.0.0.1",
    "239.1.2.3",
    "255.255.255.255",
    "240.0.0.1",
];
const MARTIANS6: [&str; 6] = [
    "::",
    "::1",
    "ff02::1",
    "::ffff:192.0.2.1",
    "::ffff:0:1",
    "::2",
];

fn recipe() -> impl Strategy<Value = Recipe> {
    (
        (
            0..SERVICES.len(),
            prop::bool::weighted(0.8),
            prop_oneof![
                6 => Just(None),
                1 => prop_oneof![Just(80u16), Just(443), any::<u16>()].prop_map(Some),
            ],
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.5),
            prop::bool::weighted(0.15),
            prop_oneof![3 => 40000u16..40064, 1 => any::<u16>()],
        ),
        (
            any::<u8>(),
            prop_oneof![3 => Just(0u8), 1 => any::<u8>()],
            // No checksum often enough that GUE's zero-checksum case comes up in every CI run.
            prop_oneof![
                7 => Just(UdpCsum::Kept),
                2 => Just(UdpCsum::None),
                1 => Just(UdpCsum::ZeroAfterNat),
            ],
            prop_oneof![6 => Just(0u8), 3 => Just(1), 1 => Just(2)],
        ),
        prop_oneof![
            6 => Just(None),
            1 => Just(Some(1u8)),
            1 => Just(Some(58u8)),
            1 => prop_oneof![Just(0u8), Just(43), Just(44), Just(60)].prop_map(Some),
            1 => any::<u8>().prop_map(Some),
        ],
        // Mostly small; sometimes past a tunnel's or a route's MTU.
        prop_oneof![4 => 0usize..48, 1 => 1150usize..1560],
        prop_oneof![
            3 => Just(Vec::new()),
            2 => prop::collection::vec((0usize..80, any::<u8>()), 1..4),
        ],
        prop_oneof![4 => Just(None), 1 => (0usize..90).prop_map(Some)],
        prop_oneof![19 => Just(None), 1 => (0usize..MARTIANS4.len()).prop_map(Some)],
    )
        .prop_map(
            |(
                (svc, to_vip, port, switch_proto, reply, icmp_error, sport),
                (tcp_flags, tos, udp_csum, vlan_tags),
                proto,
                payload,
                writes,
                cut,
                martian,
            )| Recipe {
                svc,
                to_vip,
                port,
                switch_proto,
                reply,
                icmp_error,
                sport,
                tcp_flags,
                tos,
                udp_csum,
                vlan_tags,
                proto,
                payload,
                writes,
                cut,
                martian,
            },
        )
}

/// A generated UDP datagram's checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UdpCsum {
    /// As computed.
    Kept,
    /// Zero: sent without one.
    None,
    /// Computed, with the payload's first word chosen so that the datagram NAT makes of it
    /// sums to all ones: its checksum computes to zero, which UDP must send as 0xffff.
    ZeroAfterNat,
}

/// The frames of a case, in order.
fn build(r: &Recipe) -> Vec<Vec<u8>> {
    let s = SERVICES[r.svc];
    let udp = (s.proto == 17) != r.switch_proto;
    let v6 = s.vip.contains(':');
    let client = if v6 { CLIENT6 } else { CLIENT4 };
    let dst = match (v6, r.to_vip) {
        (_, true) => s.vip,
        (false, false) => "203.0.113.99",
        (true, false) => "2001:db8:10::99",
    };
    let dport = r.port.unwrap_or(s.port);
    if r.icmp_error {
        let first = frame(client, r.sport, s.vip, s.port, clean_l4(&s), None, b"");
        let err = if s.mode == Mode::Nat && r.reply {
            // From the real server, or a router on its side, to the client: about what the
            // director sent the server.
            let router = if v6 {
                "2001:db8:100::fe"
            } else {
                "198.51.100.62"
            };
            let from = if r.tcp_flags & 0x80 != 0 {
                router
            } else {
                s.rs
            };
            let quote = ((client, r.sport), (s.rs, s.rport));
            icmp_error(r, udp, (from, client), quote)
        } else {
            // From a router on the client's path to the VIP, about a reply.
            let router = if v6 { "2001:db8:2::fe" } else { "192.0.2.254" };
            let quote = ((s.vip, s.port), (client, r.sport));
            icmp_error(r, udp, (router, s.vip), quote)
        };
        return vec![first, err];
    }
    if s.mode == Mode::Nat && r.reply && !r.to_vip {
        // A reply to a client port no client packet came from (unless a random one did).
        let cport = r.sport.wrapping_add(30000);
        let back = ((s.vip, s.port), (client, cport));
        return vec![changed(
            r,
            udp,
            (s.rs, s.rport),
            (client, cport),
            Some(back),
        )];
    }
    if s.mode == Mode::Nat && r.reply {
        // The connection first (clean), then the real server's answer from its own address.
        let first = frame(client, r.sport, s.vip, s.port, clean_l4(&s), None, b"");
        let back = ((s.vip, s.port), (client, r.sport));
        let reply = changed(r, udp, (s.rs, s.rport), (client, r.sport), Some(back));
        return vec![first, reply];
    }
    let client = match (r.martian, v6) {
        (Some(m), false) => MARTIANS4[m],
        (Some(m), true) => MARTIANS6[m],
        (None, _) => client,
    };
    let nat = (s.mode == Mode::Nat).then_some(((client, r.sport), (s.rs, s.rport)));
    vec![changed(r, udp, (client, r.sport), (dst, dport), nat)]
}

/// The L4 of a clean client packet opening a flow of service `s`.
fn clean_l4(s: &Svc) -> L4 {
    if s.proto == 17 {
        L4::Udp
    } else {
        L4::Tcp(Flags {
            syn: true,
            ..Flags::default()
        })
    }
}

/// An ICMP error from `from` to `to`, quoting a packet between the ends of `quote` (TCP or UDP
/// by `udp`), as the recipe changes it.
fn icmp_error(r: &Recipe, udp: bool, (from, to): (&str, &str), quote: (End, End)) -> Vec<u8> {
    let v6 = from.contains(':');
    let ((qs, qsport), (qd, qdport)) = quote;
    let l4 = if udp {
        L4::Udp
    } else {
        L4::Tcp(Flags {
            ack: true,
            ..Flags::default()
        })
    };
    let payload = vec![0x5a; r.payload];
    let quote = frame(qs, qsport, qd, qdport, l4, None, &payload)[14..].to_vec();
    // The relayed types, and one that is not (parameter problem), chosen by the otherwise
    // unused flag byte.
    let (ty, code, rest) = if v6 {
        let kinds = [
            (2, 0, 1400u32.to_be_bytes()),
            (1, 4, [0; 4]),
            (3, 0, [0; 4]),
            (4, 0, [0; 4]),
        ];
        kinds[r.tcp_flags as usize % kinds.len()]
    } else {
        let kinds = [
            (3, 4, [0, 0, 0x05, 0x78]),
            (11, 0, [0; 4]),
            (3, 1, [0; 4]),
            (4, 0, [0; 4]),
            (12, 0, [0; 4]),
        ];
        kinds[r.tcp_flags as usize % kinds.len()]
    };
    let mut f = icmp_error_frame(from, to, ty, code, rest, &quote);
    let l3 = 14;
    if v6 {
        f[l3] = 0x60 | (r.tos >> 4);
        f[l3 + 1] = (r.tos << 4) | (f[l3 + 1] & 0x0f);
    } else {
        f[l3 + 1] = r.tos;
        f[l3 + 10..l3 + 12].fill(0);
        let c = checksum(&f[l3..l3 + 20]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    for _ in 0..r.vlan_tags {
        f.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    }
    let len = f.len();
    for &(at, v) in &r.writes {
        f[at % len] = v;
    }
    if let Some(cut) = r.cut {
        f.truncate(14 + cut % (len - 13));
    }
    f
}

/// An address and a port.
type End<'a> = (&'a str, u16);

/// A frame from `src` to `dst` as the recipe changes it. `nat`: its ends as NAT translates them
/// (for a frame of a NAT service).
fn changed(r: &Recipe, udp: bool, src: End, dst: End, nat: Option<(End, End)>) -> Vec<u8> {
    let ((src, sport), (dst, dport)) = (src, dst);
    let v6 = src.contains(':');
    let l4 = if udp {
        L4::Udp
    } else {
        L4::Tcp(Flags::default())
    };
    let vlan = (r.vlan_tags > 0).then_some(7);
    let payload = vec![0x5a; r.payload];
    let mut f = frame(src, sport, dst, dport, l4, vlan, &payload);
    let l3 = if vlan.is_some() { 18 } else { 14 };
    let l4_off = l3 + if v6 { 40 } else { 20 };
    if udp {
        match r.udp_csum {
            UdpCsum::Kept => {}
            UdpCsum::None => f[l4_off + 6..l4_off + 8].fill(0),
            UdpCsum::ZeroAfterNat => {
                if let (Some(((s2, sp2), (d2, dp2))), true) = (nat, r.payload >= 2) {
                    // The translated datagram (checksum and first payload word zero) sums to
                    // `have`; the payload word makes it all ones.
                    let mut seg = f[l4_off..].to_vec();
                    seg[0..2].copy_from_slice(&sp2.to_be_bytes());
                    seg[2..4].copy_from_slice(&dp2.to_be_bytes());
                    seg[6..10].fill(0);
                    let p2 = pseudo(&bytes(s2), &bytes(d2), 17, seg.len());
                    let have = fold(sum(&[p2, seg].concat()));
                    f[l4_off + 8..l4_off + 10].copy_from_slice(&(0xffff - have).to_be_bytes());
                    // The frame's own checksum, right for it as sent.
                    f[l4_off + 6..l4_off + 8].fill(0);
                    let p1 = pseudo(&bytes(src), &bytes(dst), 17, f.len() - l4_off);
                    let c = match checksum(&[&p1[..], &f[l4_off..]].concat()) {
                        0 => 0xffff,
                        c => c,
                    };
                    f[l4_off + 6..l4_off + 8].copy_from_slice(&c.to_be_bytes());
                }
            }
        }
    } else {
        // Every flag byte, not only the combinations the builder knows: the checksum follows.
        f[l4_off + 13] = r.tcp_flags;
        let c = be16(&f, l4_off + 16);
        let c = !fold((!c) as u64 + r.tcp_flags as u64);
        f[l4_off + 16..l4_off + 18].copy_from_slice(&c.to_be_bytes());
    }
    if v6 {
        f[l3] = 0x60 | (r.tos >> 4);
        f[l3 + 1] = (r.tos << 4) | (f[l3 + 1] & 0x0f);
    } else {
        f[l3 + 1] = r.tos;
        f[l3 + 10..l3 + 12].fill(0);
        let c = checksum(&f[l3..l3 + 20]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    if let Some(p) = r.proto {
        f[l3 + if v6 { 6 } else { 9 }] = p;
    }
    if r.vlan_tags == 2 {
        // A second tag (QinQ) after the first.
        f.splice(16..16, [0x81, 0x00, 0x00, 0x08]);
    }
    let len = f.len();
    for &(at, v) in &r.writes {
        f[at % len] = v;
    }
    if let Some(cut) = r.cut {
        f.truncate(14 + cut % (len - 13));
    }
    f
}

#[test]
fn generated_frames_agree_with_the_host_model() {
    let cases: u32 = std::env::var("XVS_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    in_fib_ns(NS, &script(), move |d, ifx| {
        director(d);
        let station = lb_user::station::plan(&[(ifx, vec![DIRECTOR_MAC])].into());
        d.dp.set_link_macs(&station.slots)
            .expect("LINK_MACS written");
        run(d, ifx, cases);
    });
}

/// The counters of outcomes (every verdict's reason, the zero GUE checksum, the relayed ICMP
/// error), by reason:
/// not the connection table's and persistence's bookkeeping.
fn outcomes(d: &Director) -> Vec<(Reason, u64)> {
    let outcome = |r: &Reason| {
        let n = r.name();
        ["tx_", "pass_", "drop_", "redirect_"]
            .iter()
            .any(|p| n.starts_with(p))
            || *r == Reason::TunZeroCsum
            || *r == Reason::IcmpErrorForwarded
    };
    let mut all = d.dp.reasons().unwrap();
    all.retain(|(r, _)| outcome(r));
    all.sort_by_key(|(r, _)| *r as u32);
    all
}

fn run(d: &mut Director, ifx: u32, cases: u32) {
    let started = std::time::Instant::now();
    let d = RefCell::new(d);
    let model = RefCell::new(Model::new());
    let seen = RefCell::new(BTreeMap::<String, u32>::new());
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&recipe(), |r| {
        for f in build(&r) {
            let want = model.borrow_mut().expect(&f);
            let mut d = d.borrow_mut();
            let before = outcomes(&d);
            let (v, out) = d.run_on(ifx, &f);
            let after = outcomes(&d);
            let mut seen = seen.borrow_mut();
            *seen.entry(format!("{:?}", want.reason)).or_default() += 1;
            if let Some(a) = want.also {
                *seen.entry(format!("{a:?}")).or_default() += 1;
            }
            // The expected reasons counted once each, no other outcome at all.
            let moved: Vec<(Reason, u64)> = after
                .iter()
                .zip(&before)
                .filter(|(a, b)| a.1 != b.1)
                .map(|(a, b)| (a.0, a.1 - b.1))
                .collect();
            let mut counted = vec![(want.reason, 1)];
            counted.extend(want.also.map(|a| (a, 1)));
            counted.sort_by_key(|c| c.0 as u32);
            let why = format!(
                "{f:02x?} ({r:?}): expected {:?}, counted {moved:?}",
                want.reason
            );
            prop_assert_eq!(v, want.verdict, "verdict of {}", why);
            prop_assert_eq!(&out, &want.out, "output of {}", why);
            prop_assert_eq!(moved, counted, "counters of {}", why);
        }
        Ok::<(), TestCaseError>(())
    });
    let seen = seen.into_inner();
    println!(
        "{cases} cases in {:?}, frames by expected reason: {seen:?}",
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator reaches every outcome the model knows (else the test proves less than it
    // says).
    for r in [
        Reason::TxDr,
        Reason::TxTunnel,
        Reason::TxNat,
        Reason::TxNatReply,
        Reason::TxIcmpTooBig,
        Reason::PassNotService,
        Reason::PassNatReplyUnknown,
        Reason::PassNonIp,
        Reason::PassFragment,
        Reason::PassOtherProto,
        Reason::PassIpv6ExtHeader,
        Reason::PassStackedVlan,
        Reason::PassIcmp,
        Reason::DropTruncatedL2,
        Reason::DropMalformedL3,
        Reason::DropMalformedL4,
        Reason::DropTooBigUnquotable,
        Reason::TunZeroCsum,
        Reason::IcmpErrorForwarded,
        Reason::RedirectTunnel,
        Reason::RedirectNat,
        Reason::DropMartianSource,
        Reason::PassNotOurMac,
    ] {
        assert!(
            seen.get(&format!("{r:?}")).copied().unwrap_or(0) > 0 || cases < 1000,
            "no generated frame expected {r:?}: {seen:?}"
        );
    }
}
