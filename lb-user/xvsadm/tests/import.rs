//! `xvsadm import keepalived FILE`: prints the configuration, or writes it with `-o` only
//! when all of it converted; a malformed file is an error at its line that writes nothing.

use std::{path::PathBuf, process::Command};

fn xvsadm(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xvsadm"))
        .args(args)
        .env_remove("XVS_SOCKET")
        .output()
        .expect("running xvsadm");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A directory of its own under the target directory, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const GOOD: &str = "\
vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 51
}
include services/*.conf
";

const SERVICE: &str = "\
virtual_server 203.0.113.10 80 {
    lb_algo wrr
    lb_kind DR
    real_server 198.51.100.11 80 {
        weight 2
        TCP_CHECK {
            connect_timeout 1
        }
    }
}
";

#[test]
fn prints_or_writes_the_configuration() {
    let dir = scratch("import-good");
    std::fs::create_dir(dir.join("services")).unwrap();
    std::fs::write(dir.join("keepalived.conf"), GOOD).unwrap();
    std::fs::write(dir.join("services/web.conf"), SERVICE).unwrap();
    let conf = dir.join("keepalived.conf");
    let (code, out, err) = xvsadm(&["import", "keepalived", conf.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("vrrp_instance VI_1 (line 1)"), "{out}");
    assert!(
        out.contains("tcp = \"203.0.113.10:80\"\nscheduler = \"wrr\"\n"),
        "{out}"
    );
    assert!(
        out.contains("  address = \"198.51.100.11:80\"\n  weight = 2\n"),
        "{out}"
    );

    let toml = dir.join("xvs.toml");
    let (code, written, err) = xvsadm(&[
        "import",
        "keepalived",
        conf.to_str().unwrap(),
        "-o",
        toml.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(written, "", "-o prints nothing");
    assert_eq!(std::fs::read_to_string(&toml).unwrap(), out);
    // What it wrote is a configuration file xvs takes.
    lb_core::config_file::load(&toml).unwrap();
}

#[test]
fn a_malformed_file_fails_at_its_line_and_writes_nothing() {
    let dir = scratch("import-bad");
    let conf = dir.join("keepalived.conf");
    std::fs::write(
        &conf,
        "virtual_server 203.0.113.10 80 {\n    lb_algo fastest\n}\n",
    )
    .unwrap();
    let toml = dir.join("xvs.toml");
    let (code, out, err) = xvsadm(&[
        "import",
        "keepalived",
        conf.to_str().unwrap(),
        "-o",
        toml.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(out, "");
    assert!(
        err.starts_with(&format!(
            "xvsadm: {}:2: unknown scheduler `fastest`",
            conf.display()
        )),
        "{err}"
    );
    assert!(!toml.exists(), "nothing is written");
    // A usage error is ipvsadm's exit status 2.
    let (code, _, _) = xvsadm(&["import", "haproxy", conf.to_str().unwrap()]);
    assert_eq!(code, Some(2));
}
