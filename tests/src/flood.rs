//! Floods against the connection table, for the flood test and `xvs-flood` (measurements):
//! TCP echo servers on the lab's real servers, long-lived client connections that must keep
//! their real server, a SYN flood with random spoofed sources (hping3), and spoofed SYN + ACK
//! pairs (a raw socket: hping3 cannot pair them), all from the client's namespace.
//!
//! A broken connection is one whose echo fails (the other real server, which has no such
//! connection, answers with a reset) or comes back from another real server.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    lab::{Lab, VIP4},
    netns,
};

/// Port of the echo service on the real servers (and of the flooded virtual service).
pub const ECHO_PORT: u16 = 7070;

/// Echo servers in each real server's namespace on [`ECHO_PORT`] (both families): every line
/// received is answered with the server's name (`rsN`). Stopped and joined when dropped.
pub struct TcpEcho {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts the echo servers of real servers 1..=`reals` and waits until each listens.
pub fn tcp_echo(lab: &Lab, reals: usize) -> Result<TcpEcho> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 1..=reals {
        let ns = lab.ns(&format!("rs{i}"));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let _ = netns::in_netns(&ns, move || serve_echo(i, &stop, ready_tx));
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("echo server did not start")?
            .with_context(|| format!("echo server on rs{i}"))?;
    }
    Ok(TcpEcho { stop, threads })
}

fn serve_echo(
    i: usize,
    stop: &Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let listener = match TcpListener::bind(("::", ECHO_PORT))
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
    {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut conns = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let stop = stop.clone();
                conns.push(std::thread::spawn(move || echo_conn(i, stream, &stop)));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

fn echo_conn(i: usize, mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let answer = format!("rs{i}\n");
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                for _ in buf[..n].iter().filter(|&&b| b == b'\n') {
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A client's connection to the echo service through the director, with the real server that
/// answered its first line.
pub struct EchoConn {
    stream: TcpStream,
    /// The real server that answered first (`rsN`).
    pub server: String,
}

impl EchoConn {
    /// Connects from the client's namespace and learns which real server answers.
    pub fn open(lab: &Lab, addr: SocketAddr) -> Result<EchoConn> {
        let stream = netns::in_netns(&lab.ns("cl"), move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        })??;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut c = EchoConn {
            stream,
            server: String::new(),
        };
        c.server = c.ask()?;
        Ok(c)
    }

    /// Sends a line; the name of the real server that answered.
    pub fn ask(&mut self) -> Result<String> {
        self.stream.write_all(b"ping\n")?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            if self.stream.read(&mut byte)? == 0 {
                bail!("connection closed");
            }
            line.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    }

    /// Still answered by its first real server.
    pub fn works(&mut self) -> bool {
        self.check().is_ok()
    }

    /// Still answered by its first real server, or why not.
    pub fn check(&mut self) -> Result<()> {
        let s = self.ask()?;
        if s != self.server {
            bail!("answered by {s}, not {}", self.server);
        }
        Ok(())
    }
}

/// What a flood sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Packets sent (hping3's own count, or the pair sender's).
    pub packets: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

/// `hping3 --flood --rand-source -S` to `vip:port` from namespace `ns` for `secs` seconds
/// (stopped by SIGINT, so that hping3 prints its count).
pub fn syn_flood(ns: &str, vip: &str, port: u16, secs: u32) -> Result<Sent> {
    let started = Instant::now();
    let out = netns::cmd_in(ns, "timeout")
        .args(["-s", "INT", "-k", "3", &secs.to_string(), "hping3"])
        .args([
            "--flood",
            "--rand-source",
            "-S",
            "-p",
            &port.to_string(),
            vip,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running hping3 (Debian package hping3)")?;
    let elapsed = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // "--- 203.0.113.10 hping statistic ---\n1234 packets transmitted, 0 packets received, ..."
    let packets = text
        .lines()
        .find_map(|l| l.split_once(" packets transmitted")?.0.trim().parse().ok())
        .with_context(|| format!("hping3 printed no count ({}): {text}", out.status))?;
    Ok(Sent { packets, elapsed })
}

/// Spoofed SYN + ACK pairs to `vip:port` from namespace `ns`: for each pair a random source
/// address (outside the lab's 198.51.100.0/24) and port, a SYN, then an ACK of the same tuple, as
/// a real handshake's client side looks to a director that never sees the server's side. At
/// most `max_pairs`, for at most `dur`.
pub fn syn_ack_pairs(
    ns: &str,
    vip: Ipv4Addr,
    port: u16,
    dur: Duration,
    max_pairs: u64,
) -> Result<Sent> {
    netns::in_netns(ns, move || send_pairs(vip, port, dur, max_pairs))?
}

fn send_pairs(vip: Ipv4Addr, port: u16, dur: Duration, max_pairs: u64) -> Result<Sent> {
    // SAFETY: a plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        bail!("raw socket: {}", std::io::Error::last_os_error());
    }
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(vip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let started = Instant::now();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15 ^ started.elapsed().as_nanos() as u64 ^ 0xdead_beef;
    let mut next = || {
        // xorshift64*: fast, and good enough to spread tuples.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut packets = 0u64;
    let mut pairs = 0u64;
    let mut err = None;
    'outer: while pairs < max_pairs {
        if pairs.is_multiple_of(1024) && started.elapsed() >= dur {
            break;
        }
        let r = next();
        let src = Ipv4Addr::from((r >> 32) as u32);
        let [a, b, c, _] = src.octets();
        if a == 0 || a >= 224 || a == 127 || (a, b, c) == (198, 51, 100) {
            continue;
        }
        let sport = (r as u16).max(1024);
        let seq = (r >> 16) as u32;
        for (flags, seq, ack) in [(0x02u8, seq, 0u32), (0x10, seq.wrapping_add(1), !seq)] {
            let pkt = tcp_packet(src, vip, sport, port, seq, ack, flags);
            // SAFETY: pkt and to are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                // A full socket buffer: try again.
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    continue;
                }
                err = Some(e);
                break 'outer;
            }
            packets += 1;
        }
        pairs += 1;
    }
    let elapsed = started.elapsed();
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    if let Some(e) = err {
        bail!("sending pairs: {e}");
    }
    Ok(Sent { packets, elapsed })
}

/// An IPv4 + TCP segment (no options, no payload) with its TCP checksum; the kernel fills the
/// IP header's checksum and id.
fn tcp_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut sum: u32 = 6 + 20;
    for w in src.octets().chunks(2).chain(dst.octets().chunks(2)) {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    for w in t.chunks(2) {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    t[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}

/// Which flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// hping3's random-source SYNs.
    Syn,
    /// Spoofed SYN + ACK pairs.
    SynAckPairs,
}

/// A flood scenario: established connections through a small table, a flood, then checks.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// The flood.
    pub kind: Kind,
    /// Idle connections (nothing sent during the flood).
    pub idle: usize,
    /// Active connections (a line each every 100 ms during the flood).
    pub active: usize,
    /// How long the flood runs.
    pub secs: u32,
    /// New connections tried after the flood.
    pub new_conns: usize,
}

/// What a scenario found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// What the flood sent.
    pub sent: Sent,
    /// conn_new during the flood (the director's count of new entries).
    pub conn_new: u64,
    /// conn_midflow_miss during the flood.
    pub midflow: u64,
    /// Idle connections broken (of `Scenario::idle`).
    pub idle_broken: usize,
    /// Active connections broken after the flood.
    pub active_broken: usize,
    /// Lines the active connections exchanged during the flood, and how many failed (a
    /// connection stops asking at its first failure).
    pub active_asks: (u64, u64),
    /// Why asks failed, during the flood and after it.
    pub errors: std::collections::BTreeMap<String, usize>,
    /// New connections after the flood that worked.
    pub new_ok: usize,
    /// The connection table after the flood (`-L --json`'s `table`) and its capacity.
    pub table: serde_json::Value,
    /// Capacity.
    pub capacity: u64,
}

/// One reason counter from `xvsadm -L -n --json`.
pub fn reason(lab: &Lab, name: &str) -> Result<u64> {
    Ok(listing(lab)?["reasons"][name].as_u64().unwrap_or(0))
}

/// `xvsadm -L -n --json`.
pub fn listing(lab: &Lab) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &lab.xvsadm_ok(&["-L", "-n", "--json"])?,
    )?)
}

/// Runs a scenario in `lab` (its echo service configured on VIP4:[`ECHO_PORT`] and the echo
/// servers running).
pub fn run(lab: &Lab, s: Scenario) -> Result<Outcome> {
    let vip: SocketAddr = SocketAddr::new(VIP4.parse()?, ECHO_PORT);
    let mut idle = (0..s.idle)
        .map(|_| EchoConn::open(lab, vip))
        .collect::<Result<Vec<_>>>()?;
    let active = (0..s.active)
        .map(|_| EchoConn::open(lab, vip))
        .collect::<Result<Vec<_>>>()?;
    let before = listing(lab)?;
    let stop = Arc::new(AtomicBool::new(false));
    let talker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut active = active;
            let mut broken = vec![false; active.len()];
            let (mut asks, mut failed) = (0u64, 0u64);
            let mut errors = std::collections::BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                for (c, b) in active.iter_mut().zip(broken.iter_mut()) {
                    if *b {
                        continue;
                    }
                    asks += 1;
                    if let Err(e) = c.check() {
                        *errors.entry(format!("during: {e}")).or_insert(0) += 1;
                        failed += 1;
                        *b = true;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (active, asks, failed, errors)
        })
    };
    let sent = match s.kind {
        Kind::Syn => syn_flood(&lab.ns("cl"), VIP4, ECHO_PORT, s.secs),
        Kind::SynAckPairs => syn_ack_pairs(
            &lab.ns("cl"),
            VIP4.parse()?,
            ECHO_PORT,
            Duration::from_secs(s.secs as u64),
            u64::MAX,
        ),
    };
    stop.store(true, Ordering::Relaxed);
    let (mut active, asks, failed, errors) = talker
        .join()
        .map_err(|_| anyhow::anyhow!("the active connections' thread panicked"))?;
    let sent = sent?;
    let after = listing(lab)?;
    let count = |l: &serde_json::Value, name: &str| l["reasons"][name].as_u64().unwrap_or(0);
    let mut out = Outcome {
        sent,
        conn_new: count(&after, "conn_new") - count(&before, "conn_new"),
        midflow: count(&after, "conn_midflow_miss") - count(&before, "conn_midflow_miss"),
        active_asks: (asks, failed),
        errors,
        table: after["table"].clone(),
        capacity: after["conn_table_size"].as_u64().unwrap_or(0),
        ..Default::default()
    };
    // After the flood: each connection asked once more (one that timed out during the flood
    // finds its late answer, from the same server, and counts as working).
    out.idle_broken = broken_after(&mut idle, &mut out.errors);
    out.active_broken = broken_after(&mut active, &mut out.errors);
    out.new_ok = (0..s.new_conns)
        .filter(|_| EchoConn::open(lab, vip).is_ok_and(|mut c| c.works()))
        .count();
    Ok(out)
}

/// How many of `conns` fail to get an answer from their own real server; why, into `errors`.
fn broken_after(
    conns: &mut [EchoConn],
    errors: &mut std::collections::BTreeMap<String, usize>,
) -> usize {
    conns
        .iter_mut()
        .filter_map(|c| c.check().err())
        .map(|e| *errors.entry(format!("after: {e}")).or_insert(0) += 1)
        .count()
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} packets in {:.1} s; director: conn_new +{}, conn_midflow_miss +{}, table {} (capacity {}); \
             idle broken {}, active broken {} (asks during the flood {}, failed {}); new connections after: {} ok; errors {:?}",
            self.sent.packets,
            self.sent.elapsed.as_secs_f64(),
            self.conn_new,
            self.midflow,
            self.table,
            self.capacity,
            self.idle_broken,
            self.active_broken,
            self.active_asks.0,
            self.active_asks.1,
            self.new_ok,
            self.errors
        )
    }
}
