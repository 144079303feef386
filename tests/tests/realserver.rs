//! End-to-end tests of `xvsadm realserver` in network namespaces: a real server namespace set up
//! by xvsadm (run through `ip netns exec`, as an operator would), and a peer namespace that plays
//! director and client. In tun mode the peer sends genuinely encapsulated packets (raw IPIP /
//! IPv6-in-IP sockets, GUE over UDP sockets) and the VIP's answers come straight back to the
//! client address. Setup is idempotent, status sees drift, teardown undoes exactly what setup
//! did. Root required.

use std::{
    collections::{BTreeMap, BTreeSet},
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use xvs_tests::{
    lab::default_bin_dir,
    netns,
    packets::L4,
    poll, require_root,
    tunnel::{gue_v0_header, inner_proto, ip_packet, tcp_packet, Encap},
};

const RS_IF: &str = "rs0";
const PEER_IF: &str = "pe0";
const RS4: &str = "198.51.100.2";
const PEER4: &str = "198.51.100.1";
const RS6: &str = "2001:db8:1::2";
const PEER6: &str = "2001:db8:1::1";
const CLIENT4: &str = "203.0.113.7";
const CLIENT6: &str = "2001:db8:c::7";
const VIP4: &str = "192.0.2.10";
const VIP4_B: &str = "192.0.2.11";
const VIP6: &str = "2001:db8:f::10";
const GUE_PORT: u16 = 6080;
const ECHO_PORT: u16 = 5353;
const WAIT: Duration = Duration::from_secs(5);

/// A real server namespace and a peer (director + client) namespace on one veth pair. Dropping
/// it removes both namespaces (with the interface, and so the decapsulator) and the state dir.
struct RsLab {
    rs: String,
    peer: String,
    dir: PathBuf,
}

impl RsLab {
    fn new(tag: &str, default_route: bool) -> Result<Self> {
        require_root();
        let lab = Self {
            rs: format!("xvsdc-{tag}-rs"),
            peer: format!("xvsdc-{tag}-pe"),
            dir: std::env::temp_dir().join(format!("xvsdc-{tag}-{}", std::process::id())),
        };
        // Leftovers of a crashed run of this test.
        netns::destroy(&lab.rs);
        netns::destroy(&lab.peer);
        netns::create(&lab.rs)?;
        netns::create(&lab.peer)?;
        netns::ip(&[
            "link", "add", RS_IF, "netns", &lab.rs, "type", "veth", "peer", "name", PEER_IF,
            "netns", &lab.peer,
        ])?;
        let (rs, pe) = (lab.rs.as_str(), lab.peer.as_str());
        netns::ip(&["-n", rs, "addr", "add", &format!("{RS4}/24"), "dev", RS_IF])?;
        netns::ip(&["-n", rs, "addr", "add", &format!("{RS6}/64"), "dev", RS_IF])?;
        netns::ip(&["-n", rs, "link", "set", RS_IF, "up"])?;
        netns::ip(&[
            "-n",
            pe,
            "addr",
            "add",
            &format!("{PEER4}/24"),
            "dev",
            PEER_IF,
        ])?;
        netns::ip(&[
            "-n",
            pe,
            "addr",
            "add",
            &format!("{PEER6}/64"),
            "dev",
            PEER_IF,
        ])?;
        netns::ip(&["-n", pe, "link", "set", PEER_IF, "up"])?;
        // The client lives on the peer. The peer has no route to the VIPs: a stray RST from its
        // kernel (no socket for the client's raw handshakes) cannot reach the real server.
        netns::ip(&[
            "-n",
            pe,
            "addr",
            "add",
            &format!("{CLIENT4}/32"),
            "dev",
            "lo",
        ])?;
        netns::ip(&[
            "-n",
            pe,
            "addr",
            "add",
            &format!("{CLIENT6}/128"),
            "dev",
            "lo",
        ])?;
        if default_route {
            netns::ip(&["-n", rs, "route", "add", "default", "via", PEER4])?;
            netns::ip(&["-n", rs, "-6", "route", "add", "default", "via", PEER6])?;
        }
        std::fs::create_dir_all(&lab.dir)?;
        Ok(lab)
    }

    fn state(&self) -> PathBuf {
        self.dir.join("realserver.json")
    }

    /// `xvsadm realserver ARGS --state ...` inside the real server namespace.
    fn xvsadm(&self, args: &[&str]) -> Output {
        let state = self.state();
        self.xvsadm_with(&[args, &["--state", state.to_str().unwrap()]].concat())
    }

    /// `xvsadm realserver ARGS` inside the real server namespace, as given.
    fn xvsadm_with(&self, args: &[&str]) -> Output {
        netns::cmd_in(&self.rs, default_bin_dir().join("xvsadm").to_str().unwrap())
            .arg("realserver")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run xvsadm")
    }

    /// The record xvsadm keeps for the real server namespace when not told where.
    fn default_state(&self) -> PathBuf {
        PathBuf::from(format!("/run/xvs/netns/{}/realserver.json", self.rs))
    }

    /// As xvsadm, and it must succeed: its stdout.
    fn xvsadm_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.xvsadm(args);
        ensure!(
            out.status.success(),
            "xvsadm realserver {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// As xvsadm, and it must fail: its stderr.
    fn xvsadm_err(&self, args: &[&str]) -> String {
        let out = self.xvsadm(args);
        assert!(
            !out.status.success(),
            "xvsadm realserver {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `status --json`: whether it exited 0, and the report.
    fn status(&self) -> Result<(bool, Value)> {
        let out = self.xvsadm(&["status", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("status JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok((out.status.success(), v))
    }

    /// The sysctls setup may touch, as they are now.
    fn sysctls(&self) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for dev in ["all", RS_IF] {
            for name in ["arp_ignore", "arp_announce", "rp_filter"] {
                let v = netns::sh(
                    &self.rs,
                    &format!("cat /proc/sys/net/ipv4/conf/{dev}/{name}"),
                )?;
                out.insert(
                    format!("{dev}.{name}"),
                    String::from_utf8(v.stdout)?.trim().to_string(),
                );
            }
        }
        Ok(out)
    }

    fn sysctl_set(&self, dev: &str, name: &str, value: &str) -> Result<()> {
        netns::sh(
            &self.rs,
            &format!("echo {value} > /proc/sys/net/ipv4/conf/{dev}/{name}"),
        )
        .map(|_| ())
    }

    /// Addresses on the real server's lo ("addr/prefix").
    fn lo_addrs(&self) -> Result<BTreeSet<String>> {
        let out = netns::run(
            Command::new("ip").args(["-n", &self.rs, "-j", "addr", "show", "dev", "lo"]),
        )?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(v[0]["addr_info"]
            .as_array()
            .context("addr_info")?
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect())
    }

    /// The XDP program on the real server's interface: (id, name).
    fn xdp_prog(&self) -> Result<Option<(u64, String)>> {
        let out =
            netns::run(Command::new("ip").args(["-n", &self.rs, "-j", "link", "show", RS_IF]))?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        let prog = &v[0]["xdp"]["prog"];
        Ok(prog["id"]
            .as_u64()
            .map(|id| (id, prog["name"].as_str().unwrap_or("").to_string())))
    }

    /// Binds a UDP socket on the real server that answers `n` datagrams with "echo:" + data,
    /// then returns who sent them.
    fn udp_echo(
        &self,
        vip: &str,
        n: usize,
    ) -> Result<std::thread::JoinHandle<Result<Vec<SocketAddr>>>> {
        let addr = SocketAddr::new(vip.parse()?, ECHO_PORT);
        let sock = netns::in_netns(&self.rs, move || UdpSocket::bind(addr))??;
        sock.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(std::thread::spawn(move || {
            let mut from = Vec::new();
            let mut buf = [0u8; 2048];
            for _ in 0..n {
                let (len, src) = sock
                    .recv_from(&mut buf)
                    .context("echo server: no datagram")?;
                sock.send_to(&[b"echo:", &buf[..len]].concat(), src)?;
                from.push(src);
            }
            Ok(from)
        }))
    }
}

impl Drop for RsLab {
    fn drop(&mut self) {
        netns::destroy(&self.rs);
        netns::destroy(&self.peer);
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(dir) = self.default_state().parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Sends `inner` from the peer to `outer_dst` the way a director would: inside IPIP or
/// IPv6-in-IP (raw socket of protocol 4 or 41: the kernel writes the outer header), or inside
/// GUE (a UDP socket to the GUE port; variant 0 with IPVS's 4-byte header, or variant 1).
fn send_tunnelled(lab: &RsLab, outer_dst: &str, encap: Encap, inner: Vec<u8>) -> Result<()> {
    let dst: IpAddr = outer_dst.parse()?;
    netns::in_netns(&lab.peer, move || -> Result<()> {
        match encap {
            Encap::Ip => {
                let domain = if dst.is_ipv4() {
                    Domain::IPV4
                } else {
                    Domain::IPV6
                };
                let proto = Protocol::from(i32::from(inner_proto(&inner)));
                let s = Socket::new(domain, Type::RAW, Some(proto))?;
                s.send_to(&inner, &SockAddr::from(SocketAddr::new(dst, 0)))?;
            }
            Encap::GueV0 { port, .. } | Encap::GueV1 { port, .. } => {
                let any: IpAddr = if dst.is_ipv4() { "0.0.0.0" } else { "::" }.parse()?;
                let s = UdpSocket::bind((any, 0))?;
                let payload = match encap {
                    Encap::GueV0 { .. } => [&gue_v0_header(&inner)[..], &inner].concat(),
                    _ => inner,
                };
                s.send_to(&payload, (dst, port))?;
            }
        }
        Ok(())
    })?
}

/// The client sends a tunnelled UDP datagram to VIP:ECHO_PORT from a socket bound to its own
/// address; the answer must come back to that socket, from the VIP, unencapsulated.
fn udp_through(
    lab: &RsLab,
    outer_dst: &str,
    encap: Encap,
    client: &str,
    cport: u16,
    vip: &str,
) -> Result<()> {
    let payload = format!("datagram via {encap:?} to {outer_dst}");
    let local = SocketAddr::new(client.parse()?, cport);
    let sock = netns::in_netns(&lab.peer, move || UdpSocket::bind(local))??;
    sock.set_read_timeout(Some(WAIT))?;
    let inner = ip_packet(client, cport, vip, ECHO_PORT, L4::Udp, payload.as_bytes());
    send_tunnelled(lab, outer_dst, encap, inner)?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock
        .recv_from(&mut buf)
        .with_context(|| format!("no answer from {vip} to a datagram via {encap:?}"))?;
    ensure!(
        from == SocketAddr::new(vip.parse()?, ECHO_PORT),
        "the answer must come from the VIP, came from {from}"
    );
    ensure!(
        buf[..n] == *format!("echo:{payload}").as_bytes(),
        "echoed payload"
    );
    Ok(())
}

/// A TCP segment read from a raw socket.
struct Segment {
    src: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
}

/// Reads the next TCP segment from a raw socket (IPv4 raw sockets include the IP header,
/// IPv6 ones do not).
fn read_segment(raw: &Socket) -> Option<Segment> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    let (n, from) = raw.recv_from(&mut buf).ok()?;
    // SAFETY: recv_from initialised the first n bytes.
    let data: Vec<u8> = buf[..n]
        .iter()
        .map(|b| unsafe { b.assume_init() })
        .collect();
    let src = from.as_socket()?.ip();
    let tcp = match src {
        IpAddr::V4(_) => &data[usize::from(data[0] & 0x0f) * 4..],
        IpAddr::V6(_) => &data[..],
    };
    let be32 = |i: usize| u32::from_be_bytes([tcp[i], tcp[i + 1], tcp[i + 2], tcp[i + 3]]);
    Some(Segment {
        src,
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: be32(4),
        ack: be32(8),
        flags: tcp[13],
    })
}

/// A TCP handshake from the client to VIP:80 with every client segment tunnelled: the SYN-ACK
/// must come straight from the VIP to the client, and the real server's listener must accept
/// a connection from the client's address and port.
fn tcp_through(
    lab: &RsLab,
    outer_dst: &str,
    encap: Encap,
    client: &str,
    cport: u16,
    vip: &str,
) -> Result<()> {
    let vip_ip: IpAddr = vip.parse()?;
    let listener = netns::in_netns(&lab.rs, move || TcpListener::bind((vip_ip, 80)))??;
    listener.set_nonblocking(true)?;
    let domain = if vip_ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let raw = netns::in_netns(&lab.peer, move || {
        Socket::new(domain, Type::RAW, Some(Protocol::TCP))
    })??;
    raw.set_read_timeout(Some(Duration::from_millis(100)))?;
    send_tunnelled(
        lab,
        outer_dst,
        encap,
        tcp_packet(client, cport, vip, 80, 1000, None),
    )?;
    let syn_ack = poll(WAIT, "a SYN-ACK from the VIP", || {
        read_segment(&raw).filter(|s| {
            s.src == vip_ip && s.sport == 80 && s.dport == cport && s.flags & 0x12 == 0x12
        })
    })?;
    ensure!(
        syn_ack.ack == 1001,
        "SYN-ACK acknowledges the SYN: ack {}",
        syn_ack.ack
    );
    let ack = tcp_packet(
        client,
        cport,
        vip,
        80,
        1001,
        Some(syn_ack.seq.wrapping_add(1)),
    );
    send_tunnelled(lab, outer_dst, encap, ack)?;
    let (_conn, peer) = poll(WAIT, "the listener to accept", || listener.accept().ok())?;
    ensure!(
        peer == SocketAddr::new(client.parse()?, cport),
        "the real server sees the client itself, not the director: {peer}"
    );
    Ok(())
}

#[test]
fn tun_real_server_answers_tunnelled_clients_directly() -> Result<()> {
    let lab = RsLab::new("tun", true)?;
    let out = lab.xvsadm_ok(&[
        "setup",
        "--mode",
        "tun",
        "--vip",
        &format!("{VIP4},{VIP6}"),
        "--gue-port",
        &GUE_PORT.to_string(),
    ])?;
    ensure!(out.contains("attached the decapsulator xvs_decap"), "{out}");
    ensure!(
        out.contains(&format!("to {RS_IF}")),
        "the default route's interface: {out}"
    );
    // xvsadm has exited (from a mount namespace of its own, which is gone): still attached.
    let (prog_id, name) = lab.xdp_prog()?.context("no XDP program on the interface")?;
    ensure!(name == "xvs_decap", "{name}");
    let (ok, st) = lab.status()?;
    ensure!(ok, "status: {st:#}");
    ensure!(st["decap"]["prog_id"] == prog_id, "{st:#}");
    ensure!(st["decap"]["attached"] == true, "{st:#}");

    // UDP: one datagram per encapsulation, each from its own client port.
    let echo4 = lab.udp_echo(VIP4, 3)?;
    let echo6 = lab.udp_echo(VIP6, 4)?;
    let gue_v0 = Encap::GueV0 {
        sport: 0,
        port: GUE_PORT,
    };
    let gue_v1 = Encap::GueV1 {
        sport: 0,
        port: GUE_PORT,
    };
    let cases = [
        (RS4, Encap::Ip, CLIENT4, VIP4), // IPIP
        (RS4, Encap::Ip, CLIENT6, VIP6), // 6in4
        (RS6, Encap::Ip, CLIENT6, VIP6), // IP6IP6
        (RS6, Encap::Ip, CLIENT4, VIP4), // 4in6
        (RS4, gue_v0, CLIENT4, VIP4),
        (RS6, gue_v0, CLIENT6, VIP6),
        (RS4, gue_v1, CLIENT6, VIP6),
    ];
    let mut seen = (Vec::new(), Vec::new());
    for (i, (outer, encap, client, vip)) in cases.iter().enumerate() {
        let cport = 41000 + i as u16;
        udp_through(&lab, outer, *encap, client, cport, vip)
            .with_context(|| format!("case {i}: {encap:?} to {outer}"))?;
        let want = SocketAddr::new(client.parse()?, cport);
        if vip == &VIP4 {
            seen.0.push(want);
        } else {
            seen.1.push(want);
        }
    }
    let got4 = echo4.join().expect("echo thread")?;
    let got6 = echo6.join().expect("echo thread")?;
    ensure!(
        got4 == seen.0 && got6 == seen.1,
        "the server saw the clients: {got4:?} {got6:?}"
    );

    // TCP: full handshakes inside IPIP and IP6IP6.
    tcp_through(&lab, RS4, Encap::Ip, CLIENT4, 42000, VIP4)?;
    tcp_through(&lab, RS6, Encap::Ip, CLIENT6, 42001, VIP6)?;

    // Tunnelled, but for an address that is not a VIP: passed to the kernel, not opened.
    let stray = ip_packet(CLIENT4, 43000, "192.0.2.99", ECHO_PORT, L4::Udp, b"x");
    send_tunnelled(&lab, RS4, Encap::Ip, stray)?;
    // It is counted once the program has seen it; then every counter is exact.
    let st = poll(WAIT, "the stray packet to be counted", || {
        let (_, st) = lab.status().ok()?;
        (st["decap"]["counters"]["pass_not_vip"] == 1).then_some(st)
    })?;
    let c = &st["decap"]["counters"];
    for (name, want) in [
        ("decap_ipip", 3),
        ("decap_6in4", 1),
        ("decap_ip6ip6", 3),
        ("decap_4in6", 1),
        ("decap_gue", 2),
        ("decap_gue_direct", 1),
        ("pass_not_local", 0),
        ("pass_malformed", 0),
        ("pass_gue_unsupported", 0),
    ] {
        ensure!(c[name] == want, "{name}: {} (want {want}); {c:#}", c[name]);
    }
    ensure!(
        c["pass_not_tunnel"].as_u64() > Some(0),
        "ARP, NDP and replies' ACKs pass: {c:#}"
    );
    Ok(())
}

#[test]
fn setup_is_idempotent_status_sees_drift_teardown_restores_exactly() -> Result<()> {
    let lab = RsLab::new("idem", true)?;
    // What an operator had before: strict reverse-path filtering, and one VIP already on lo.
    lab.sysctl_set("all", "rp_filter", "1")?;
    netns::ip(&[
        "-n",
        &lab.rs,
        "addr",
        "add",
        &format!("{VIP4_B}/32"),
        "dev",
        "lo",
    ])?;
    let sysctls_before = lab.sysctls()?;
    let lo_before = lab.lo_addrs()?;
    let vips = format!("{VIP4},{VIP4_B},{VIP6}");
    let setup = [
        "setup",
        "--mode",
        "tun",
        "--vip",
        &vips,
        "--gue-port",
        "6080,6081",
    ];

    let out = lab.xvsadm_ok(&setup)?;
    for line in [
        "set net.ipv4.conf.all.rp_filter = 2 (was 1)",
        "set net.ipv4.conf.all.arp_ignore = 1 (was 0)",
        &format!("set net.ipv4.conf.{RS_IF}.arp_announce = 2 (was 0)"),
        &format!("bound {VIP4}/32 to lo"),
        &format!("bound {VIP6}/128 to lo"),
        &format!("{VIP4_B} was already on lo: kept"),
    ] {
        ensure!(out.contains(line), "setup output lacks {line:?}:\n{out}");
    }
    let record = std::fs::read(lab.state())?;
    let sysctls_set = lab.sysctls()?;
    ensure!(
        sysctls_set[&format!("{RS_IF}.rp_filter")] == "0",
        "only the strict one was relaxed"
    );
    let lo_set = lab.lo_addrs()?;
    let prog = lab.xdp_prog()?;

    // Twice: nothing changes, and it says so.
    let out = lab.xvsadm_ok(&setup)?;
    ensure!(out.contains("nothing to change"), "{out}");
    ensure!(
        std::fs::read(lab.state())? == record,
        "the record is unchanged"
    );
    ensure!(lab.sysctls()? == sysctls_set && lab.lo_addrs()? == lo_set && lab.xdp_prog()? == prog);

    let (ok, st) = lab.status()?;
    ensure!(
        ok && st["problems"].as_array().is_some_and(Vec::is_empty),
        "{st:#}"
    );
    let vip_b = st["vips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["addr"] == VIP4_B)
        .unwrap();
    ensure!(
        vip_b["added_by_setup"] == false && vip_b["on_lo"] == true,
        "{st:#}"
    );
    ensure!(
        st["decap"]["gue_ports"] == serde_json::json!([6080, 6081]),
        "{st:#}"
    );
    ensure!(
        st["decap"]["locals"] == serde_json::json!([RS4, RS6]),
        "the interface's addresses: {st:#}"
    );

    // Someone removes a VIP and resets a sysctl: status says so and fails.
    netns::ip(&[
        "-n",
        &lab.rs,
        "addr",
        "del",
        &format!("{VIP4}/32"),
        "dev",
        "lo",
    ])?;
    lab.sysctl_set("all", "arp_announce", "0")?;
    let (ok, st) = lab.status()?;
    let problems = st["problems"].to_string();
    ensure!(!ok, "status must fail on drift: {st:#}");
    ensure!(
        problems.contains(VIP4) && problems.contains("arp_announce"),
        "{problems}"
    );
    // Setup again repairs exactly that.
    let out = lab.xvsadm_ok(&setup)?;
    ensure!(out.contains(&format!("bound {VIP4}/32 to lo")), "{out}");
    ensure!(
        out.contains("set net.ipv4.conf.all.arp_announce = 2 (was 0)"),
        "{out}"
    );
    ensure!(lab.status()?.0, "repaired");

    // A different setup is refused and changes nothing.
    let record = std::fs::read(lab.state())?;
    let err = lab.xvsadm_err(&["setup", "--mode", "tun", "--vip", "192.0.2.12"]);
    ensure!(
        err.contains("already set up differently") && err.contains("VIPs"),
        "{err}"
    );
    ensure!(lab.lo_addrs()? == lo_set && lab.sysctls()? == sysctls_set);
    ensure!(std::fs::read(lab.state())? == record && lab.xdp_prog()? == prog);

    // Someone changes a value setup had set: teardown leaves that one alone.
    lab.sysctl_set("all", "arp_ignore", "2")?;
    let out = lab.xvsadm_ok(&["teardown"])?;
    ensure!(
        out.contains("left net.ipv4.conf.all.arp_ignore = 2"),
        "{out}"
    );
    ensure!(out.contains(&format!("left {VIP4_B} on lo")), "{out}");
    let mut want = sysctls_before.clone();
    want.insert("all.arp_ignore".into(), "2".into());
    ensure!(
        lab.sysctls()? == want,
        "sysctls restored: {:?} vs {want:?}",
        lab.sysctls()?
    );
    ensure!(
        lab.lo_addrs()? == lo_before,
        "lo as before: {:?}",
        lab.lo_addrs()?
    );
    ensure!(lab.xdp_prog()?.is_none(), "decapsulator detached");
    ensure!(!lab.state().exists(), "record removed");
    let (ok, st) = lab.status()?;
    ensure!(!ok && st["set_up"] == false, "{st:#}");
    // Teardown twice is harmless.
    ensure!(lab
        .xvsadm_ok(&["teardown"])?
        .contains("nothing to tear down"));
    Ok(())
}

#[test]
fn refused_setups_change_nothing() -> Result<()> {
    let lab = RsLab::new("refuse", false)?;
    let sysctls = lab.sysctls()?;
    let lo = lab.lo_addrs()?;
    let unchanged = || -> Result<()> {
        ensure!(lab.sysctls()? == sysctls, "sysctls unchanged");
        ensure!(lab.lo_addrs()? == lo, "lo unchanged");
        ensure!(!lab.state().exists(), "no record");
        Ok(())
    };
    let err = lab.xvsadm_err(&["setup", "--mode", "tun", "--vip", VIP4]);
    ensure!(
        err.contains("no default route") && err.contains("--iface"),
        "{err}"
    );
    unchanged()?;
    let err = lab.xvsadm_err(&["setup", "--mode", "tun", "--vip", VIP4, "--iface", "nope0"]);
    ensure!(err.contains("no interface named nope0"), "{err}");
    let err = lab.xvsadm_err(&["setup", "--mode", "dr", "--vip", VIP4, "--gue-port", "6080"]);
    ensure!(err.contains("--gue-port needs --mode tun"), "{err}");
    let err = lab.xvsadm_err(&["setup", "--mode", "dr", "--vip", "127.0.0.2"]);
    ensure!(err.contains("cannot be a VIP"), "{err}");
    unchanged()?;

    // Another XDP program (here through a bpf_link, as xvsd attaches) holds the interface:
    // setup fails, and the sysctls and VIPs it had already set are rolled back.
    let rs = lab.rs.clone();
    let state = lab.state();
    let err = netns::in_netns(&lab.rs, move || -> Result<String> {
        let mut ebpf = aya::Ebpf::load(xvs_tests::object::AUX)?;
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut("xvs_pass")
            .context("xvs_pass")?
            .try_into()?;
        prog.load()?;
        prog.attach(RS_IF, aya::programs::XdpMode::Skb)?;
        let out = netns::cmd_in(&rs, default_bin_dir().join("xvsadm").to_str().unwrap())
            .args([
                "realserver",
                "setup",
                "--mode",
                "tun",
                "--vip",
                VIP4,
                "--iface",
                RS_IF,
            ])
            .args(["--local", RS4, "--state"])
            .arg(&state)
            .output()?;
        if out.status.success() {
            bail!("setup succeeded over another XDP program");
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    })??;
    ensure!(
        err.contains("already has an XDP program attached") && err.contains("xvs_pass"),
        "{err}"
    );
    unchanged()?;
    ensure!(
        lab.xdp_prog()?.is_none(),
        "the other program went away with its owner"
    );
    Ok(())
}

/// The peer's neighbour entry for `ip` on its interface: (state, has a link-layer address).
fn neighbour(lab: &RsLab, ip: &str) -> Result<Option<(String, bool)>> {
    let out = netns::run(
        Command::new("ip").args(["-n", &lab.peer, "-j", "neigh", "show", ip, "dev", PEER_IF]),
    )?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array().and_then(|a| a.first()).map(|n| {
        (
            n["state"][0].as_str().unwrap_or("").to_string(),
            n["lladdr"].is_string(),
        )
    }))
}

/// The client sends a plain UDP datagram to VIP:ECHO_PORT (routed however the peer routes
/// it); Ok when the VIP answers.
fn udp_plain(lab: &RsLab, client: &str, cport: u16, vip: &str) -> Result<()> {
    let local = SocketAddr::new(client.parse()?, cport);
    let sock = netns::in_netns(&lab.peer, move || UdpSocket::bind(local))??;
    sock.set_read_timeout(Some(WAIT))?;
    sock.send_to(b"plain", (vip.parse::<IpAddr>()?, ECHO_PORT))?;
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf).context("no answer from the VIP")?;
    ensure!(from == SocketAddr::new(vip.parse()?, ECHO_PORT) && &buf[..n] == b"echo:plain");
    Ok(())
}

#[test]
fn dr_real_server_hides_its_vips_from_arp_and_answers_routed_traffic() -> Result<()> {
    let lab = RsLab::new("dr", true)?;
    // The VIP is already on lo (an operator's half-done setup): ARP still answers for it.
    netns::ip(&[
        "-n",
        &lab.rs,
        "addr",
        "add",
        &format!("{VIP4}/32"),
        "dev",
        "lo",
    ])?;
    netns::sh(
        &lab.peer,
        &format!("sysctl -qw net.ipv4.neigh.{PEER_IF}.retrans_time_ms=100"),
    )?;
    netns::ip(&[
        "-n",
        &lab.peer,
        "route",
        "add",
        &format!("{VIP4}/32"),
        "dev",
        PEER_IF,
    ])?;
    let probe = |cport| -> Result<()> {
        let sock = netns::in_netns(&lab.peer, move || UdpSocket::bind((CLIENT4, cport)))??;
        sock.send_to(b"who has the VIP?", (VIP4, ECHO_PORT))?;
        Ok(())
    };
    probe(44000)?;
    poll(WAIT, "the real server to answer ARP for the VIP", || {
        neighbour(&lab, VIP4).ok()?.filter(|(_, ll)| *ll)
    })?;

    let sysctls = lab.sysctls()?;
    let out = lab.xvsadm_ok(&["setup", "--mode", "dr", "--vip", &format!("{VIP4},{VIP6}")])?;
    ensure!(out.contains(&format!("{VIP4} was already on lo")), "{out}");
    ensure!(out.contains(&format!("bound {VIP6}/128 to lo")), "{out}");
    ensure!(
        out.contains("arp_ignore = 1") && out.contains("arp_announce = 2"),
        "{out}"
    );
    ensure!(
        !out.contains("rp_filter"),
        "dr leaves rp_filter alone: {out}"
    );
    ensure!(lab.xdp_prog()?.is_none(), "dr attaches nothing");
    let (ok, st) = lab.status()?;
    ensure!(ok && st["decap"].is_null(), "{st:#}");

    // Now the VIP is invisible to ARP on the wire...
    netns::ip(&["-n", &lab.peer, "neigh", "flush", "dev", PEER_IF])?;
    probe(44001)?;
    let (state, lladdr) = poll(WAIT, "ARP for the VIP to fail", || {
        neighbour(&lab, VIP4).ok()?.filter(|(s, _)| s == "FAILED")
    })?;
    ensure!(state == "FAILED" && !lladdr);
    // ...but traffic routed to the real server for the VIP (what a DR director sends) is
    // answered by the VIP, directly.
    netns::ip(&[
        "-n",
        &lab.peer,
        "route",
        "replace",
        &format!("{VIP4}/32"),
        "via",
        RS4,
    ])?;
    netns::ip(&[
        "-n",
        &lab.peer,
        "-6",
        "route",
        "add",
        &format!("{VIP6}/128"),
        "via",
        RS6,
    ])?;
    let echo4 = lab.udp_echo(VIP4, 1)?;
    let echo6 = lab.udp_echo(VIP6, 1)?;
    udp_plain(&lab, CLIENT4, 44002, VIP4)?;
    udp_plain(&lab, CLIENT6, 44003, VIP6)?;
    echo4.join().expect("echo thread")?;
    echo6.join().expect("echo thread")?;

    let out = lab.xvsadm_ok(&["teardown"])?;
    ensure!(out.contains(&format!("left {VIP4} on lo")), "{out}");
    ensure!(lab.sysctls()? == sysctls, "sysctls restored");
    ensure!(
        lab.lo_addrs()?.contains(&format!("{VIP4}/32"))
            && !lab.lo_addrs()?.contains(&format!("{VIP6}/128")),
        "the VIP that was there stays, the one setup bound goes"
    );
    Ok(())
}

#[test]
fn each_named_namespace_has_its_own_record_and_a_dead_ones_is_replaced() -> Result<()> {
    let lab = RsLab::new("stale", true)?;
    let ok = |out: Output| -> Result<String> {
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let setup = ["setup", "--mode", "tun", "--vip", VIP4];
    // No --state: under `ip netns exec NAME` the record is NAME's own.
    ok(lab.xvsadm_with(&setup))?;
    let record = lab.default_state();
    ensure!(record.exists(), "{} written", record.display());
    ok(lab.xvsadm_with(&["status"]))?;

    // The namespace dies without a teardown (a crash), and a new one takes its name.
    netns::destroy(&lab.rs);
    netns::create(&lab.rs)?;
    let out = lab.xvsadm_with(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        !out.status.success() && text.contains("no longer exists"),
        "{text}"
    );
    // Setup in the new namespace replaces the dead one's record instead of refusing.
    netns::ip(&[
        "-n", &lab.rs, "link", "add", RS_IF, "type", "veth", "peer", "name", "rs1",
    ])?;
    netns::ip(&[
        "-n",
        &lab.rs,
        "addr",
        "add",
        &format!("{RS4}/24"),
        "dev",
        RS_IF,
    ])?;
    netns::ip(&["-n", &lab.rs, "link", "set", RS_IF, "up"])?;
    let out = ok(lab.xvsadm_with(&[&setup[..], &["--iface", RS_IF]].concat()))?;
    ensure!(
        out.contains("no longer exists") && out.contains("bound"),
        "{out}"
    );
    ok(lab.xvsadm_with(&["status"]))?;
    ok(lab.xvsadm_with(&["teardown"]))?;
    ensure!(
        !record.parent().unwrap().exists(),
        "the namespace's record directory is removed"
    );
    Ok(())
}
