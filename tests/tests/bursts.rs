//! A burst of new connections under each IPVS scheduler, end to end in namespaces: real apache2
//! servers with weights 1 and 3, curl from one client. Prints the measured split of every
//! scheduler and checks it against what the scheduler promises. Root required.

use xvs_tests::lab::{rs_ip4, tally, two_reals, VIP4};

const BURST: usize = 200;

/// (scheduler, expected connections to rs1 (weight 1) out of BURST, tolerance).
const EXPECTED: &[(&str, usize, usize)] = &[
    // Weights ignored: alternate.
    ("rr", 100, 2),
    // IPVS's wrr cycle (rs2, rs2, rs1, rs2) from one shared cursor: exact.
    ("wrr", 50, 2),
    // Weights ignored, equal load: alternate (ties to the first server).
    ("lc", 100, 10),
    // The plan spreads by weight: 1:3.
    ("wlc", 50, 10),
    ("sed", 50, 15),
    ("nq", 50, 15),
    // Highest weight takes everything.
    ("fo", 0, 0),
    // Weighted random choice of two, the lighter wins: close to 1:3.
    ("twos", 50, 25),
];

/// Hash schedulers: one client (and one VIP) maps to one server, whichever it is.
const ONE_SERVER: &[&str] = &["sh", "dh", "mh", "lblc", "lblcr"];

#[test]
fn every_scheduler_splits_a_burst_as_it_promises() {
    let lab = two_reals("e2e-burst");
    let vip = format!("{VIP4}:80");
    let (rs1, rs2) = (format!("{}:80", rs_ip4(1)), format!("{}:80", rs_ip4(2)));
    let url = format!("http://{VIP4}/");
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let all = EXPECTED
        .iter()
        .map(|(s, _, _)| *s)
        .chain(ONE_SERVER.iter().copied())
        .chain(["ovf"]);
    for sched in all {
        lab.xvsadm_ok(&["-C"]).unwrap();
        lab.xvsadm_ok(&["-A", "-t", &vip, "-s", sched]).unwrap();
        lab.xvsadm_ok(&["-a", "-t", &vip, "-r", &rs1, "-g", "-w", "1"])
            .unwrap();
        lab.xvsadm_ok(&["-a", "-t", &vip, "-r", &rs2, "-g", "-w", "3"])
            .unwrap();
        let bodies = lab.curl_many(&url, BURST).unwrap();
        let t = tally(&bodies);
        let n1 = t.get("rs1").copied().unwrap_or(0);
        let n2 = t.get("rs2").copied().unwrap_or(0);
        report.push(format!("{sched:<6} rs1 (w1) {n1:>4}  rs2 (w3) {n2:>4}"));
        if n1 + n2 != BURST {
            failures.push(format!("{sched}: {} of {BURST} answered", n1 + n2));
            continue;
        }
        if let Some((_, want, tol)) = EXPECTED.iter().find(|(s, _, _)| *s == sched) {
            if n1.abs_diff(*want) > *tol {
                failures.push(format!("{sched}: rs1 got {n1}, expected {want} +- {tol}"));
            }
        } else if ONE_SERVER.contains(&sched) {
            if n1 != 0 && n2 != 0 {
                failures.push(format!("{sched}: one client spread over both servers"));
            }
        } else {
            // ovf: the highest weight takes connections until its active count exceeds its
            // weight; each planned connection counts as active until the next recomputation,
            // so rs2 (weight 3) takes at least 4 before rs1 takes any, and both get some.
            if n2 < 4 || n1 == 0 {
                failures.push(format!("ovf: rs1 {n1}, rs2 {n2}"));
            }
        }
    }
    eprintln!(
        "burst of {BURST} new connections, weights 1:3\n{}",
        report.join("\n")
    );
    assert!(failures.is_empty(), "{failures:#?}\n{}", report.join("\n"));
}
