//! The real decapsulator object under BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use aya::programs::{TestRun, TestRunOptions};
use lb_common::decap::DecapReason;
use lb_user::decap::{DecapConfig, Decapsulator};

/// A loaded (unattached) decapsulator with its maps filled.
pub struct Decap {
    /// The program and its maps.
    pub d: Decapsulator,
}

impl Decap {
    /// Loads the decapsulator and fills its maps: local addresses, VIPs, GUE ports.
    pub fn new(locals: &[&str], vips: &[&str], gue_ports: &[u16]) -> Self {
        crate::require_root();
        let mut d = Decapsulator::load().expect("load the decapsulator object");
        let parse = |v: &[&str]| v.iter().map(|a| a.parse::<IpAddr>().unwrap()).collect();
        let cfg = DecapConfig {
            locals: parse(locals),
            vips: parse(vips),
            gue_ports: gue_ports.iter().copied().collect(),
        };
        d.maps.sync(&cfg).expect("fill the maps");
        assert_eq!(d.maps.config().unwrap(), cfg, "maps read back as written");
        Self { d }
    }

    /// Runs one frame (repeat = 1); returns the verdict and the output bytes.
    pub fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 512];
        let res = self
            .d
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Vec<(DecapReason, u64)> {
        self.d.maps.counters().expect("read the counters")
    }

    /// One counter.
    pub fn counter(&self, r: DecapReason) -> u64 {
        self.counters()
            .into_iter()
            .find(|(x, _)| *x == r)
            .map(|(_, n)| n)
            .unwrap()
    }
}
