//! The real director object under BPF_PROG_TEST_RUN.

use std::{collections::HashMap, net::IpAddr};

use aya::programs::{TestRun, TestRunOptions};
use lb_common::Reason;
use lb_user::{
    dataplane::{Dataplane, Sizes},
    model::{Change, Config},
};

/// XDP verdicts.
pub mod verdict {
    /// XDP_DROP.
    pub const DROP: u32 = 1;
    /// XDP_PASS.
    pub const PASS: u32 = 2;
    /// XDP_TX.
    pub const TX: u32 = 3;
    /// XDP_REDIRECT.
    pub const REDIRECT: u32 = 4;
}

/// A loaded (unattached) director with a configuration and known MACs.
pub struct Director {
    /// The data plane.
    pub dp: Dataplane,
    /// Desired configuration.
    pub config: Config,
    /// MACs the controller would have resolved.
    pub macs: HashMap<IpAddr, [u8; 6]>,
}

impl Director {
    /// Loads the director with small maps, and pins this thread to CPU 0 so that per-CPU state
    /// (round-robin cursors, counters) is one CPU's.
    pub fn new() -> Self {
        crate::require_root();
        pin_to_cpu0();
        let dp = Dataplane::load_with(Sizes {
            conns: 65536,
            sched_slots: 1 << 18,
            nat_replies: None,
        })
        .expect("load the director object");
        Self {
            dp,
            config: Config::default(),
            macs: HashMap::new(),
        }
    }

    /// Applies changes and pushes them, as the daemon would.
    pub fn apply(&mut self, changes: &[Change]) {
        self.config.apply_all(changes).expect("valid changes");
        self.dp.sync(&self.config, &self.macs).expect("sync");
    }

    /// Registers a MAC for a real server address.
    pub fn mac(&mut self, ip: &str, mac: [u8; 6]) {
        self.macs.insert(ip.parse().unwrap(), mac);
    }

    /// Runs one packet (repeat = 1); returns the verdict and the output bytes.
    pub fn run(&mut self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; pkt.len() + 512];
        let res = self
            .dp
            .program()
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    /// Runs one packet as if it arrived on interface `ifindex` (of the calling thread's network
    /// namespace): the FIB lookups of TUN forwarding then see that namespace's routes.
    pub fn run_on(&mut self, ifindex: u32, pkt: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; pkt.len() + 512];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (the kernel wants data = 0 and data_end = the packet's length).
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(pkt.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let res = self
            .dp
            .program()
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    /// The counter of one reason.
    pub fn reason(&self, r: Reason) -> u64 {
        self.dp
            .reasons()
            .unwrap()
            .into_iter()
            .find(|(x, _)| *x == r)
            .map(|(_, n)| n)
            .unwrap()
    }
}

impl Default for Director {
    fn default() -> Self {
        Self::new()
    }
}

/// Pins the calling thread to CPU 0.
pub fn pin_to_cpu0() {
    pin_to_cpu(0);
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

/// A network namespace for program tests whose FIB lookups need routes and neighbours: made by
/// `script` (run with `sh -e` inside it), removed on drop, also when a test fails.
struct FibNs(&'static str);

impl Drop for FibNs {
    fn drop(&mut self) {
        crate::netns::destroy(self.0);
    }
}

/// Runs `f` with a director loaded inside namespace `ns` (made by `script`, which must create
/// the interface `d0`) and d0's ifindex, as the packets' ingress interface.
pub fn in_fib_ns(
    ns: &'static str,
    script: &str,
    f: impl FnOnce(&mut Director, u32) + Send + 'static,
) {
    crate::require_root();
    crate::netns::destroy(ns);
    crate::netns::create(ns).expect("create namespace");
    let _ns = FibNs(ns);
    let out = crate::netns::sh(ns, &format!("set -e\n{script}")).expect("namespace setup");
    assert!(
        out.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::netns::in_netns(ns, move || {
        let mut d = Director::new();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"d0".as_ptr()) };
        assert_ne!(ifindex, 0, "d0 exists");
        f(&mut d, ifindex);
    })
    .expect("test body (see the panic above)");
}

/// A MAC address as `ip` writes it.
pub fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `addr` as it goes before `:port`: an IPv6 address in brackets.
pub fn bracket(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

/// The service (protocol, VIP, port).
pub fn service_key(
    proto: lb_user::model::Protocol,
    vip: &str,
    port: u16,
) -> lb_user::model::ServiceKey {
    lb_user::model::ServiceKey::Addr {
        protocol: proto,
        addr: format!("{}:{port}", bracket(vip)).parse().unwrap(),
    }
}

/// A real server at `addr`:`port` reached by `forward`, weight 1.
pub fn real_server(
    addr: &str,
    port: u16,
    forward: lb_user::model::ForwardMethod,
) -> lb_user::model::RealServer {
    lb_user::model::RealServer {
        forward,
        ..lb_user::model::RealServer::dr(format!("{}:{port}", bracket(addr)).parse().unwrap(), 1)
    }
}
