//! The routed segment the several-director labs share (`ecmp`, `vrrp`): a client on its own
//! link to a router, and behind the router one bridge with the directors and LVS-DR real
//! servers, which hold the VIPs on loopback and answer the client through the router.
//!
//! ```text
//!  cl 192.0.2.2 ── 192.0.2.1 rt 198.51.100.1 ── br0 (sw) ─┬─ directors (their own addresses)
//!                                                          └─ rs1 198.51.100.11 ... (apache2)
//! ```

use anyhow::{bail, Result};
use aya::Ebpf;

use crate::{
    lab::{attach_pass, plug, rs_ip4, rs_ip6, VIP4, VIP6},
    netns::{create, ip, sh},
};

/// The client's address (on its own link to the router).
pub const CLIENT4: &str = "192.0.2.2";
/// The router's address on the client's link.
pub const ROUTER_CLIENT4: &str = "192.0.2.1";
/// The router's address on the directors' and real servers' segment.
pub const ROUTER4: &str = "198.51.100.1";

/// One director's place on the segment.
pub struct Seat<'a> {
    /// Its namespace.
    pub ns: &'a str,
    /// Its name (its bridge port is `p-NAME`).
    pub name: &'a str,
    /// Its IPv4 address on the segment.
    pub addr: &'a str,
}

/// Builds the segment: namespaces `sw`, `rt`, `cl` (named by `ns`), the directors' and `reals`
/// real servers' namespaces plugged into the bridge. `router` is run in the router's namespace
/// after its addresses are set (what makes it this lab's router). Returns the XDP pass program
/// on the directors' bridge ports (native XDP_TX into a veth delivers only when the peer runs
/// XDP too), to be kept as long as the lab.
pub fn build(
    ns: impl Fn(&str) -> String,
    directors: &[Seat],
    reals: usize,
    router: &str,
) -> Result<Ebpf> {
    let (sw, rt, cl) = (ns("sw"), ns("rt"), ns("cl"));
    for n in [&sw, &rt, &cl] {
        create(n)?;
    }
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    // The client's own link to the router.
    ip(&[
        "-n", &cl, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &rt,
    ])?;
    // Checksums filled in by the senders: the directors forward the client's packets with
    // XDP_TX, which keeps no checksum-offload state.
    let out = sh(
        &cl,
        &format!(
            "set -e
            ip addr add {CLIENT4}/24 dev eth0
            ip link set eth0 up
            ip route add default via {ROUTER_CLIENT4}
            ethtool -K eth0 tx off >/dev/null"
        ),
    )?;
    if !out.status.success() {
        bail!("client setup: {}", String::from_utf8_lossy(&out.stderr));
    }
    plug(&sw, "br0", &rt, "p-rt", "eth1", ROUTER4, "2001:db8:1::1")?;
    let out = sh(
        &rt,
        &format!(
            "set -e
            ip addr add {ROUTER_CLIENT4}/24 dev eth0
            ip link set eth0 up
            sysctl -qw net.ipv4.conf.all.forwarding=1
            ethtool -K eth0 tx off >/dev/null
            {router}"
        ),
    )?;
    if !out.status.success() {
        bail!("router setup: {}", String::from_utf8_lossy(&out.stderr));
    }
    for (i, d) in directors.iter().enumerate() {
        create(d.ns)?;
        let v6 = format!("2001:db8:1::{}", 2 + i);
        let port = format!("p-{}", d.name);
        plug(&sw, "br0", d.ns, &port, "eth0", d.addr, &v6)?;
    }
    for i in 1..=reals {
        let rs = ns(&format!("rs{i}"));
        create(&rs)?;
        plug(
            &sw,
            "br0",
            &rs,
            &format!("p-rs{i}"),
            "eth0",
            &rs_ip4(i),
            &rs_ip6(i),
        )?;
        // LVS-DR real server: the VIPs on loopback, never answering ARP for them nor sourcing
        // ARP from them; replies go to the client through the router, not the directors.
        let out = sh(
            &rs,
            &format!(
                "set -e
                ip addr add {VIP4}/32 dev lo
                ip addr add {VIP6}/128 dev lo
                ip route add default via {ROUTER4}
                sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
                 net.ipv4.conf.eth0.arp_ignore=1 net.ipv4.conf.eth0.arp_announce=2"
            ),
        )?;
        if !out.status.success() {
            bail!("rs{i} setup: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let ports: Vec<String> = directors.iter().map(|d| format!("p-{}", d.name)).collect();
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    attach_pass(&sw, &ports)
}

/// Takes director `name`'s port on the bridge in `sw` down (the director is cut off: its eth0
/// loses carrier; the router's interface stays up) or brings it back up.
pub fn set_port(sw: &str, name: &str, up: bool) -> Result<()> {
    let port = format!("p-{name}");
    ip(&[
        "-n",
        sw,
        "link",
        "set",
        &port,
        if up { "up" } else { "down" },
    ])
}

/// Waits until every director (its name and its `-L --json`) has resolved every real server's
/// MAC address (until then a real server takes no new connections there).
pub fn wait_reals_resolved<'a>(
    timeout: std::time::Duration,
    directors: impl IntoIterator<Item = (&'a str, Box<dyn Fn() -> Result<serde_json::Value> + 'a>)>,
) -> Result<()> {
    for (name, listing) in directors {
        crate::poll(
            timeout,
            &format!("{name} to resolve the real servers"),
            || {
                let json = listing().ok()?;
                let services = json["services"].as_array()?;
                services
                    .iter()
                    .flat_map(|s| s["reals"].as_array().into_iter().flatten())
                    .all(|r| r["mac"].is_string())
                    .then_some(())
            },
        )?;
    }
    Ok(())
}
