//! `xvsadm --help` is man-page quality and stays so: its output is compared with the committed
//! golden text, and every option the command line accepts must have a line in it.

use std::process::Command;

use clap::CommandFactory;
use lb_core::rules::Args;
use xvsadm::watch::StatsArgs;

fn xvsadm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xvsadm"))
        .args(args)
        .env_remove("XVS_SOCKET")
        .output()
        .expect("running xvsadm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_matches_the_golden_text() {
    let golden = include_str!("golden/xvsadm-help.txt");
    for flag in ["-h", "--help"] {
        let (ok, out, err) = xvsadm(&[flag]);
        assert!(ok, "{err}");
        if out != golden {
            // Show where they part, then fail.
            for (i, (a, b)) in out.lines().zip(golden.lines()).enumerate() {
                assert_eq!(
                    a,
                    b,
                    "line {} of `xvsadm {flag}` differs from tests/golden/xvsadm-help.txt",
                    i + 1
                );
            }
            assert_eq!(
                out, golden,
                "`xvsadm {flag}` differs from tests/golden/xvsadm-help.txt"
            );
        }
    }
}

#[test]
fn every_option_has_a_help_line() {
    let help = include_str!("golden/xvsadm-help.txt");
    for arg in Args::command().get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(
                help.contains(&format!("--{long}")),
                "--{long} is not in the help"
            );
        }
        if let Some(short) = arg.get_short() {
            assert!(
                help.contains(&format!("-{short}")),
                "-{short} is not in the help"
            );
        }
    }
    for arg in StatsArgs::command().get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(
                lb_core::help::STATS_USAGE.contains(&format!("--{long}")),
                "stats --{long} is not in its help"
            );
        }
    }
    let (ok, out, _) = xvsadm(&["stats", "--help"]);
    assert!(ok);
    assert_eq!(out, lb_core::help::STATS_USAGE);
}

#[test]
fn version_names_xvsadm_and_its_ipvsadm() {
    for flag in ["-v", "-V", "--version"] {
        let (ok, out, _) = xvsadm(&[flag]);
        assert!(ok);
        assert_eq!(
            out,
            format!(
                "xvsadm v{} (ipvsadm v1.31 compatible; IPVS v1.2.1 listing formats)\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}

/// A command line ipvsadm refuses exits 2 with ipvsadm's message, before any daemon is asked.
#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_xvsadm"))
        .args([
            "--socket",
            "/nonexistent/xvsd.sock",
            "-A",
            "-t",
            "203.0.113.10:80",
            "-w",
            "3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "xvsadm: Illegal 'weight' option with the 'add-service' command\n"
    );
    // A daemon that is not there is another kind of failure.
    let out = Command::new(env!("CARGO_BIN_EXE_xvsadm"))
        .args(["--socket", "/nonexistent/xvsd.sock", "-L", "-n"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to xvsd"));
}
