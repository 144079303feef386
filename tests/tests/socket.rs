//! The control socket under hostile or careless clients: oversized, truncated, garbage and
//! silent requests, many at once, half-valid transactions; and who may connect (root, the
//! --socket-group, nobody else).

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::Duration,
};

use lb_user::{
    client as control,
    model::{Change, Protocol, RealServer, Scheduler, ServiceKey},
    proto::{Command as Req, Listing, Request, Response, MAX_REQUEST_BYTES, PROTOCOL_VERSION},
};
use xvs_tests::{daemon::Xvsd, poll};

/// Sends raw bytes (optionally closing the writing side) and returns the daemon's answer line.
fn raw(socket: &Path, bytes: &[u8], close_write: bool) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let writer = {
        let mut s = s.try_clone().unwrap();
        let bytes = bytes.to_vec();
        // The daemon may answer and close before taking everything: the write may fail.
        thread::spawn(move || {
            let _ = s.write_all(&bytes);
            if close_write {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
        })
    };
    let mut answer = String::new();
    BufReader::new(&mut s).read_line(&mut answer).unwrap();
    writer.join().unwrap();
    answer
}

fn error_of(answer: &str) -> String {
    match serde_json::from_str::<Response>(answer) {
        Ok(Response::Error { message }) => message,
        other => panic!("expected an error, got {other:?} from {answer:?}"),
    }
}

fn list(socket: &Path) -> Listing {
    match control::request(socket, &Request::new(Req::List)).unwrap() {
        Response::Listing(l) => l,
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_clients_neither_wedge_the_daemon_nor_change_anything() {
    let mut x = Xvsd::new("xvscf-h").unwrap();
    x.start(&[]).unwrap();
    let socket = x.socket.clone();
    x.xvsadm_ok(&["-A", "-t", "203.0.113.10:80", "-s", "rr"])
        .unwrap();
    let rules = x.xvsadm_ok(&["-S", "-n"]).unwrap();

    // Silent clients, and one that sends half a request and stops, hold connections open.
    let mut silent: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&socket).unwrap())
        .collect();
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(format!(r#"{{"version":{PROTOCOL_VERSION},"command":{{"cmd":"li"#).as_bytes())
        .unwrap();
    silent.push(half);
    // Meanwhile everyone else is answered at once (well before the silent ones' deadline).
    poll(
        Duration::from_secs(5),
        "an answer beside silent clients",
        || x.xvsadm(&["-L", "-n"]).ok().filter(|o| o.status.success()),
    )
    .unwrap();

    // Garbage, a truncated request, an oversized one: each gets an error.
    let e = error_of(&raw(&socket, b"\x00\xffGET / HTTP/1.1\r\n\r\n\n", false));
    assert!(
        e.contains("reading the request") || e.contains("malformed"),
        "{e}"
    );
    let truncated = format!(r#"{{"version":{PROTOCOL_VERSION},"command":{{"cmd":"li"#);
    let e = error_of(&raw(&socket, truncated.as_bytes(), true));
    assert!(e.contains("malformed request"), "{e}");
    let e = error_of(&raw(&socket, b"[1,2,3]\n", false));
    assert!(e.contains("no protocol version"), "{e}");
    let e = error_of(&raw(
        &socket,
        b"{\"version\":1,\"command\":{\"cmd\":\"list\"}}\n",
        false,
    ));
    assert!(e.contains("protocol version 1 is not supported"), "{e}");
    let huge = vec![b'x'; MAX_REQUEST_BYTES + 1];
    let e = error_of(&raw(&socket, &huge, false));
    assert!(e.contains("larger than"), "{e}");

    // A transaction with one bad change applies nothing.
    let key = ServiceKey::new(Protocol::Tcp, "203.0.113.11:80".parse().unwrap());
    let half_valid = Request::new(Req::Apply {
        changes: vec![
            Change::add_service(key, Scheduler::Rr),
            Change::AddReal {
                service: ServiceKey::new(Protocol::Tcp, "203.0.113.99:80".parse().unwrap()),
                real: RealServer::dr("198.51.100.11:80".parse().unwrap(), 1),
            },
        ],
    });
    match control::request(&socket, &half_valid).unwrap() {
        Response::Error { message } => assert!(message.contains("No such service"), "{message}"),
        other => panic!("{other:?}"),
    }
    // A configuration that breaks the model's rules, sent by a client rather than parsed
    // from a file, is refused too.
    let mut bad = lb_user::state::DesiredState::default();
    bad.config
        .apply(&Change::add_service(key, Scheduler::Rr))
        .unwrap();
    let mut twice = bad.config.clone().into_services();
    twice.push(twice[0].clone());
    bad.config = lb_user::model::Config::from_services(twice);
    match control::request(
        &socket,
        &Request::new(Req::ApplyConfig {
            state: bad,
            dry_run: false,
        }),
    )
    .unwrap()
    {
        Response::Error { message } => assert!(message.contains("already exists"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(x.xvsadm_ok(&["-S", "-n"]).unwrap(), rules);

    // Many clients at once: listings and changes from several threads are all answered, and
    // every change is in.
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let socket = socket.clone();
            thread::spawn(move || {
                for i in 0..10 {
                    assert!(!list(&socket).services.is_empty());
                    let key = ServiceKey::new(
                        Protocol::Udp,
                        format!("203.0.113.{}:{}", 20 + t, 1000 + i)
                            .parse()
                            .unwrap(),
                    );
                    let resp = control::request(
                        &socket,
                        &Request::new(Req::Apply {
                            changes: vec![Change::add_service(key, Scheduler::Rr)],
                        }),
                    )
                    .unwrap();
                    assert!(matches!(resp, Response::Ok { .. }), "{resp:?}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(list(&socket).services.len(), 1 + 8 * 10);

    // The silent clients are dropped at their deadline with a reason.
    for (i, mut s) in silent.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let e = error_of(&answer);
        assert!(e.contains("timed out"), "silent client {i}: {e}");
    }
    assert_eq!(list(&socket).services.len(), 81, "the daemon still answers");
    assert!(x.pid().is_some());
}

/// xvsadm copied where any user can run it.
fn public_xvsadm(x: &Xvsd) -> PathBuf {
    let path = x.dir.join("xvsadm");
    std::fs::copy(x.bin_dir().join("xvsadm"), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `xvsadm -L -n` as user nobody, with these supplementary groups (setpriv).
fn as_nobody(xvsadm: &Path, socket: &Path, groups: Option<u32>) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534"]);
    match groups {
        Some(g) => c.arg(format!("--groups={g}")),
        None => c.arg("--clear-groups"),
    };
    c.arg(xvsadm)
        .arg("--socket")
        .arg(socket)
        .args(["-L", "-n"])
        .output()
        .unwrap()
}

fn mode(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.mode() & 0o777, m.gid())
}

/// The gid of group `users` (Debian: 100).
fn users_gid() -> u32 {
    let out = Command::new("getent")
        .args(["group", "users"])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    line.split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no group users: {line:?}"))
}

#[test]
fn only_root_and_the_socket_group_may_connect() {
    let users = users_gid();
    let mut x = Xvsd::new("xvscf-g").unwrap();
    // Any user may reach the socket's directory; the socket's own mode is what guards it.
    std::fs::set_permissions(&x.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    x.start(&[]).unwrap();
    let xvsadm = public_xvsadm(&x);
    assert_eq!(mode(&x.socket).0, 0o600);
    let out = as_nobody(&xvsadm, &x.socket, None);
    assert!(!out.status.success(), "nobody listed the table");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{out:?}"
    );
    // Even through a socket anyone may open, the daemon checks who is calling.
    std::fs::set_permissions(&x.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&xvsadm, &x.socket, Some(users));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only root may control xvsd"),
        "{out:?}"
    );

    x.stop().unwrap();
    x.start(&["--socket-group", "users"]).unwrap();
    assert_eq!(mode(&x.socket), (0o660, users));
    let out = as_nobody(&xvsadm, &x.socket, Some(users));
    assert!(
        out.status.success(),
        "a member of the group was refused: {out:?}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("IP Virtual Server"));
    let out = as_nobody(&xvsadm, &x.socket, None);
    assert!(!out.status.success(), "a stranger got in");
    std::fs::set_permissions(&x.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&xvsadm, &x.socket, None);
    assert!(
        !out.status.success(),
        "a stranger got in through a loosened socket"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("only root and members of group users may control xvsd"),
        "{out:?}"
    );
    assert!(x.log().contains("refused a control connection"));
    // Root is still served.
    x.xvsadm_ok(&["-L", "-n"]).unwrap();
    // An unknown group stops xvsd before it starts.
    x.stop().unwrap();
    let status = x
        .start_refused(&["--socket-group", "no-such-group-xvscf"])
        .unwrap();
    assert!(!status.success());
    assert!(x.log().contains("no such group"), "{}", x.log());
}
