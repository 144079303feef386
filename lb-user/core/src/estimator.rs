//! Rate estimates as IPVS keeps them (net/netfilter/ipvs/ip_vs_est.c), so `xvsadm -L --rate`
//! shows what `ipvsadm -L --rate` would: every 2 seconds the counters are sampled and each
//! rate is smoothed as `avg += (rate - avg) / 4` (an EWMA with weight 2^-2, "the rate during the
//! last 8 seconds"). Rates are kept scaled, connections and packets by 2^10 and bytes by 2^5,
//! and rounded when read, with the kernel's integer arithmetic.
//!
//! Only inbound counters exist: in DR (and TUN) the replies bypass the director, so OutPPS and
//! OutBPS are 0, as they are with IPVS in those modes.

use std::{collections::HashMap, hash::Hash, time::Duration};

use serde::{Deserialize, Serialize};

use crate::stats::Counters;

/// How often the counters are sampled (IPVS: `2*HZ`).
pub const PERIOD: Duration = Duration::from_secs(2);

/// Rates per second as ipvsadm shows them in `--rate`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    /// New connections per second.
    pub cps: u64,
    /// Packets in per second.
    pub inpps: u64,
    /// Packets out per second (NAT and FULLNAT replies; 0 for DR and TUN, whose replies do
    /// not cross the director).
    pub outpps: u64,
    /// Bytes in per second.
    pub inbps: u64,
    /// Bytes out per second (as `outpps`).
    pub outbps: u64,
}

/// One estimator: the counters last sampled and the scaled averages (ip_vs_estimator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    last: Counters,
    /// Connections per second << 10.
    cps: i64,
    /// Packets per second << 10.
    inpps: i64,
    /// Bytes per second << 5.
    inbps: i64,
    /// Reply packets per second << 10.
    outpps: i64,
    /// Reply bytes per second << 5.
    outbps: i64,
}

/// `avg += (rate - avg) >> 2`, with the kernel's arithmetic shift of a signed difference.
fn smooth(avg: i64, rate: i64) -> i64 {
    avg + ((rate - avg) >> 2)
}

/// What a counter grew by since `last`; a counter that went down was reset (zeroed, or its
/// slot reused) and counts from 0.
fn delta(now: u64, last: u64) -> i64 {
    let d = if now >= last { now - last } else { now };
    i64::try_from(d).unwrap_or(i64::MAX)
}

impl Estimate {
    /// An estimator that starts from the counters as they are now (rates 0).
    pub fn new(now: Counters) -> Self {
        Self {
            last: now,
            ..Self::default()
        }
    }

    /// One 2-second sample (ip_vs_est.c: rate = delta << 9 is "scaled by 2^10, but divided
    /// 2 seconds"; bytes: delta << 4 is 2^5 / 2).
    pub fn sample(&mut self, now: Counters) {
        let shl = |d: i64, s: u32| d.checked_mul(1 << s).unwrap_or(i64::MAX);
        self.cps = smooth(self.cps, shl(delta(now.conns, self.last.conns), 9));
        self.inpps = smooth(self.inpps, shl(delta(now.packets, self.last.packets), 9));
        self.inbps = smooth(self.inbps, shl(delta(now.bytes, self.last.bytes), 4));
        self.outpps = smooth(
            self.outpps,
            shl(delta(now.out_packets, self.last.out_packets), 9),
        );
        self.outbps = smooth(
            self.outbps,
            shl(delta(now.out_bytes, self.last.out_bytes), 4),
        );
        self.last = now;
    }

    /// The rates, rounded as ip_vs_read_estimator does: `(x + 0x1FF) >> 10`, `(x + 0xF) >> 5`.
    pub fn rates(&self) -> Rates {
        let read =
            |x: i64, round: i64, shift: u32| (x.max(0).saturating_add(round) >> shift) as u64;
        Rates {
            cps: read(self.cps, 0x1FF, 10),
            inpps: read(self.inpps, 0x1FF, 10),
            outpps: read(self.outpps, 0x1FF, 10),
            inbps: read(self.inbps, 0xF, 5),
            outbps: read(self.outbps, 0xF, 5),
        }
    }

    /// After the counters were zeroed (`-Z`): rates 0, counting again from 0
    /// (ip_vs_zero_estimator).
    pub fn zero(&mut self) {
        *self = Self::default();
    }
}

/// What an estimate belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A virtual service (or group).
    Service(crate::model::ServiceKey),
    /// A real server of a service.
    Real(crate::model::ServiceKey, std::net::SocketAddr),
}

impl Subject {
    /// The service this belongs to.
    pub fn service(&self) -> crate::model::ServiceKey {
        match self {
            Subject::Service(k) | Subject::Real(k, _) => *k,
        }
    }
}

/// The estimates of every service and real server.
#[derive(Clone, Debug)]
pub struct Estimator<K = Subject> {
    estimates: HashMap<K, Estimate>,
}

impl<K> Default for Estimator<K> {
    fn default() -> Self {
        Self {
            estimates: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Copy> Estimator<K> {
    /// One sampling round over everything that exists now: known subjects are sampled, new ones
    /// start from their current counters, and those that are gone are forgotten.
    pub fn sample(&mut self, now: impl IntoIterator<Item = (K, Counters)>) {
        let mut next = HashMap::with_capacity(self.estimates.len());
        for (k, c) in now {
            let e = match self.estimates.remove(&k) {
                Some(mut e) => {
                    e.sample(c);
                    e
                }
                None => Estimate::new(c),
            };
            next.insert(k, e);
        }
        self.estimates = next;
    }

    /// The rates of one subject (0 before its first sample).
    pub fn rates(&self, k: &K) -> Rates {
        self.estimates
            .get(k)
            .map(Estimate::rates)
            .unwrap_or_default()
    }

    /// Zeroes the estimates for which `which` holds (their counters were just zeroed).
    pub fn zero(&mut self, which: impl Fn(&K) -> bool) {
        for (k, e) in self.estimates.iter_mut() {
            if which(k) {
                e.zero();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(conns: u64, packets: u64, bytes: u64) -> Counters {
        Counters {
            conns,
            packets,
            bytes,
            ..Counters::default()
        }
    }

    /// Hand-computed with ip_vs_est.c's arithmetic: 10 connections, 100 packets and 10,000
    /// bytes per 2-second sample (5 conn/s, 50 pkt/s, 5,000 B/s).
    #[test]
    fn steady_traffic_converges_like_ipvs() {
        let mut e = Estimate::new(c(0, 0, 0));
        // Sample 1: rate = 10 << 9 = 5120; cps = 0 + (5120 - 0) >> 2 = 1280; read (1280 + 511)
        // >> 10 = 1. inbps: rate = 10000 << 4 = 160000; avg 40000; read (40000 + 15) >> 5 = 1250.
        e.sample(c(10, 100, 10_000));
        assert_eq!(
            e.rates(),
            Rates {
                cps: 1,
                inpps: 12,
                outpps: 0,
                inbps: 1250,
                outbps: 0
            }
        );
        // Sample 2: cps = 1280 + (5120 - 1280) >> 2 = 2240 -> (2240 + 511) >> 10 = 2;
        // inpps = 12800 + (51200 - 12800) >> 2 = 22400 -> 22;
        // inbps = 40000 + (160000 - 40000) >> 2 = 70000 -> 2187.
        e.sample(c(20, 200, 20_000));
        assert_eq!(
            (e.rates().cps, e.rates().inpps, e.rates().inbps),
            (2, 22, 2187)
        );
        // Converges on the true rates.
        for i in 3..=40 {
            e.sample(c(10 * i, 100 * i, 10_000 * i));
        }
        assert_eq!(
            (e.rates().cps, e.rates().inpps, e.rates().inbps),
            (5, 50, 5000)
        );
    }

    #[test]
    fn rates_decay_by_a_quarter_per_sample_once_traffic_stops() {
        let mut e = Estimate::new(c(0, 0, 0));
        let mut n = 0;
        for _ in 0..40 {
            n += 1000;
            e.sample(c(n / 10, n, n * 100));
        }
        let peak = e.rates();
        assert_eq!(peak.inpps, 500);
        let mut prev = peak.inpps;
        let mut samples = 0;
        while e.rates().inpps > 0 {
            e.sample(c(n / 10, n, n * 100));
            assert!(e.rates().inpps <= prev, "{:?}", e.rates());
            prev = e.rates().inpps;
            samples += 1;
        }
        // 500 << 10 shrinks by 3/4 per sample until it rounds to 0 (below 512):
        // ln(512000/512)/ln(4/3) = 24.01, so 25 samples, 50 seconds.
        assert_eq!(samples, 25);
    }

    #[test]
    fn zeroing_and_counter_resets() {
        let mut est: Estimator<u32> = Estimator::default();
        est.sample([(1, c(100, 1000, 1_000_000)), (2, c(5, 5, 5))]);
        // The first sample only records the counters: no spike from traffic before it.
        assert_eq!(est.rates(&1), Rates::default());
        est.sample([(1, c(200, 2000, 2_000_000)), (2, c(5, 5, 5))]);
        assert!(est.rates(&1).cps > 0);
        est.zero(|k| *k == 1);
        assert_eq!(est.rates(&1), Rates::default());
        // Counters zeroed by -Z count from 0.
        est.sample([(1, c(2, 20, 200)), (2, c(5, 5, 5))]);
        assert_eq!(est.rates(&1).inpps, (((20 << 9) >> 2) + 0x1FF) >> 10);
        // A counter that went down (slot reused) counts from 0 instead of wrapping.
        est.sample([(1, c(1, 1, 1))]);
        assert!(est.rates(&1).cps < 10);
        // Subject 2 is gone.
        assert_eq!(est.rates(&2), Rates::default());
        assert_eq!(est.estimates.len(), 1);
    }
}

#[cfg(test)]
mod out_tests {
    use super::*;

    /// Replies are estimated as the client's direction is: 100 reply packets and 10,000 bytes
    /// per 2-second sample read as IPVS would read them.
    #[test]
    fn replies_have_rates_of_their_own() {
        let mut e = Estimate::new(Counters::default());
        e.sample(Counters {
            out_packets: 100,
            out_bytes: 10_000,
            ..Counters::default()
        });
        let r = e.rates();
        assert_eq!((r.inpps, r.outpps, r.outbps), (0, 12, 1250));
    }
}
