//! One check attempt: TCP connect (TCP_CHECK), HTTP/1.0 GET in the clear or over TLS
//! (HTTP_GET, SSL_GET: status code, then an MD5 digest of the body or a text in it), or a
//! command's exit status (MISC_CHECK). The whole attempt — connect, request, answer, or the
//! command's run — is bounded by the check's timeout.

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use md5::{Digest, Md5};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    process::Command,
};
use tokio_rustls::{
    rustls::{
        self,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::CryptoProvider,
        pki_types::{CertificateDer, ServerName, UnixTime},
        DigitallySignedStruct, SignatureScheme,
    },
    TlsConnector,
};

use crate::check::{BodyCheck, Check, Probe, StatusCodes};

/// Most of an answer that is read (head and body): a health page is small, and a digest of a
/// larger body is a digest of its first MiB.
const MAX_ANSWER: usize = 1 << 20;

/// Why an attempt failed, in the words the logs use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the timeout.
    Timeout,
    /// The server refused the connection (nothing listens on the port).
    Refused,
    /// Another connection or I/O error.
    Io(String),
    /// TLS handshake or record error.
    Tls(String),
    /// Not an HTTP answer, or cut short.
    BadAnswer(String),
    /// An HTTP status the check does not accept.
    Status(u16),
    /// The body's MD5 is not the expected one.
    DigestMismatch(String),
    /// The body lacks the expected text.
    BodyMismatch,
    /// The command exited with this status.
    Exit(i32),
    /// The command was killed by this signal.
    Signal(i32),
    /// The command could not be started.
    Spawn(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timeout"),
            Failure::Refused => f.write_str("connection refused"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Tls(e) => write!(f, "TLS: {e}"),
            Failure::BadAnswer(e) => write!(f, "bad answer: {e}"),
            Failure::Status(s) => write!(f, "status {s}"),
            Failure::DigestMismatch(got) => write!(f, "digest mismatch (got {got})"),
            Failure::BodyMismatch => f.write_str("body mismatch"),
            Failure::Exit(c) => write!(f, "exit {c}"),
            Failure::Signal(s) => write!(f, "killed by signal {s}"),
            Failure::Spawn(e) => write!(f, "cannot run the command: {e}"),
        }
    }
}

/// What the attempt is against, as people read it: `198.51.100.11:80`,
/// `GET http://198.51.100.11:80/health`, or the command.
pub fn describe(check: &Check) -> String {
    match &check.probe {
        Probe::Tcp => check.target.to_string(),
        Probe::Http { tls, path, .. } => format!(
            "GET {}://{}{path}",
            if *tls { "https" } else { "http" },
            check.target
        ),
        Probe::Misc { argv } => argv.join(" "),
    }
}

/// Runs one attempt of `check`.
pub async fn attempt(check: &Check) -> Result<(), Failure> {
    match tokio::time::timeout(check.timeout, attempt_unbounded(check)).await {
        Ok(r) => r,
        // Dropping the attempt closes its socket, or kills its command (kill_on_drop).
        Err(_) => Err(Failure::Timeout),
    }
}

async fn attempt_unbounded(check: &Check) -> Result<(), Failure> {
    match &check.probe {
        Probe::Tcp => connect(check.target).await.map(drop),
        Probe::Http {
            tls,
            path,
            status,
            body,
        } => {
            let stream = connect(check.target).await?;
            if *tls {
                let stream = tls_connector()
                    .connect(ServerName::from(check.target.ip()), stream)
                    .await
                    .map_err(|e| Failure::Tls(e.to_string()))?;
                http_get(stream, check.target, path, status, body.as_ref()).await
            } else {
                http_get(stream, check.target, path, status, body.as_ref()).await
            }
        }
        Probe::Misc { argv } => run_command(argv, check.target).await,
    }
}

async fn connect(target: SocketAddr) -> Result<TcpStream, Failure> {
    TcpStream::connect(target).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            Failure::Refused
        } else {
            Failure::Io(e.to_string())
        }
    })
}

/// GET `path` over HTTP/1.0 (a server answers 1.0 without chunked encoding), then the status,
/// then the body check. Without a body check the answer is read up to its head only.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: SocketAddr,
    path: &str,
    status: &StatusCodes,
    body: Option<&BodyCheck>,
) -> Result<(), Failure> {
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: xvs-healthcheck\r\nConnection: close\r\n\r\n"
    );
    let io = |e: std::io::Error| Failure::Io(e.to_string());
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    let mut head: Option<(usize, u16, Option<usize>)> = None;
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: the answer ends there.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && head.is_some() => 0,
            Err(e) => return Err(io(e)),
        };
        buf.extend_from_slice(&chunk[..n.min(MAX_ANSWER.saturating_sub(buf.len()))]);
        if head.is_none() {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let code = response.code.unwrap_or(0);
                    let length = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
                    if !status.accepts(code) {
                        return Err(Failure::Status(code));
                    }
                    if body.is_none() {
                        return Ok(());
                    }
                    head = Some((len, code, length));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(Failure::BadAnswer(e.to_string())),
            }
        }
        if let Some((len, _, Some(length))) = head {
            if buf.len() >= len + length {
                buf.truncate(len + length);
                break;
            }
        }
        if n == 0 || buf.len() >= MAX_ANSWER {
            break;
        }
    }
    let Some((len, _, _)) = head else {
        return Err(Failure::BadAnswer(if buf.is_empty() {
            "connection closed without an answer".into()
        } else {
            "incomplete HTTP head".into()
        }));
    };
    check_body(&buf[len..], body)
}

/// The body check of an HTTP answer.
pub fn check_body(body: &[u8], check: Option<&BodyCheck>) -> Result<(), Failure> {
    match check {
        None => Ok(()),
        Some(BodyCheck::Digest(want)) => {
            let got = hex(&Md5::digest(body));
            if got == *want {
                Ok(())
            } else {
                Err(Failure::DigestMismatch(got))
            }
        }
        Some(BodyCheck::Contains(text)) => {
            let t = text.as_bytes();
            if t.is_empty() || body.windows(t.len()).any(|w| w == t) {
                Ok(())
            } else {
                Err(Failure::BodyMismatch)
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a MISC_CHECK command: exit 0 is up, anything else down (keepalived's MISC_CHECK
/// without misc_dynamic). The real server's address is in XVS_CHECK_IP and XVS_CHECK_PORT.
async fn run_command(argv: &[String], target: SocketAddr) -> Result<(), Failure> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Failure::Spawn("empty command".into()))?;
    let status = Command::new(program)
        .args(args)
        .env("XVS_CHECK_IP", target.ip().to_string())
        .env("XVS_CHECK_PORT", target.port().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| Failure::Spawn(e.to_string()))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(c) => Err(Failure::Exit(c)),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(Failure::Signal(status.signal().unwrap_or(0)))
        }
    }
}

/// The TLS client of HTTPS checks: keepalived's SSL_GET does not verify the server's
/// certificate (real servers often have self-signed ones, or one for the VIP's name), so
/// neither does this one; the handshake's signatures are still checked.
fn tls_connector() -> TlsConnector {
    static CONNECTOR: OnceLock<TlsConnector> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            TlsConnector::from(Arc::new(config))
        })
        .clone()
}

/// Accepts any certificate (see [`tls_connector`]).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    fn http_check(target: SocketAddr, status: &str, body: Option<BodyCheck>) -> Check {
        Check {
            probe: Probe::Http {
                tls: false,
                path: "/health".into(),
                status: status.parse().unwrap(),
                body,
            },
            target,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            retry: 0,
            retry_delay: Duration::from_secs(1),
            rise: 1,
            inhibit: false,
        }
    }

    /// A one-shot HTTP server on loopback answering `answer`; returns its address and the
    /// request it received.
    async fn serve(answer: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = vec![0u8; 4096];
            let n = s.read(&mut req).await.unwrap();
            s.write_all(answer).await.unwrap();
            String::from_utf8_lossy(&req[..n]).into_owned()
        });
        (addr, h)
    }

    #[tokio::test]
    async fn http_status_digest_and_body() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
        let md5_ok = hex(&Md5::digest(b"ok\n"));
        type Case = (
            &'static [u8],
            &'static str,
            Option<BodyCheck>,
            Result<(), Failure>,
        );
        let cases: [Case; 6] = [
            (OK, "200", None, Ok(())),
            (OK, "200", Some(BodyCheck::Digest(md5_ok.clone())), Ok(())),
            (
                OK,
                "200",
                Some(BodyCheck::Digest("0".repeat(32))),
                Err(Failure::DigestMismatch(md5_ok)),
            ),
            (
                OK,
                "200-299",
                Some(BodyCheck::Contains("ok".into())),
                Ok(()),
            ),
            (
                OK,
                "200",
                Some(BodyCheck::Contains("ready".into())),
                Err(Failure::BodyMismatch),
            ),
            (
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                "200-299",
                None,
                Err(Failure::Status(503)),
            ),
        ];
        for (answer, status, body, want) in cases {
            let (addr, req) = serve(answer).await;
            let got = attempt(&http_check(addr, status, body.clone())).await;
            assert_eq!(got, want, "{body:?}");
            let req = req.await.unwrap();
            assert!(
                req.starts_with(&format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n")),
                "{req}"
            );
        }
        // Garbage and silence.
        let (addr, _) = serve(b"SSH-2.0-OpenSSH\r\n").await;
        let got = attempt(&http_check(addr, "200", None)).await;
        assert!(matches!(got, Err(Failure::BadAnswer(_))), "{got:?}");
    }

    /// A loopback port that refuses connections: bound (so nothing else takes it while the
    /// socket lives) but not listening. Closed when the returned fd is dropped.
    pub fn refusing_port() -> (std::os::fd::OwnedFd, SocketAddr) {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket/bind/getsockname on a socket this function owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len),
                0
            );
            let mut got = len;
            assert_eq!(
                libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut got),
                0
            );
            (
                owned,
                SocketAddr::from(([127, 0, 0, 1], u16::from_be(sa.sin_port))),
            )
        }
    }

    #[tokio::test]
    async fn tcp_refused_and_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = http_check(l.local_addr().unwrap(), "200", None);
        c.probe = Probe::Tcp;
        assert_eq!(attempt(&c).await, Ok(()));
        let (_port, refusing) = refusing_port();
        c.target = refusing;
        assert_eq!(attempt(&c).await, Err(Failure::Refused));
        // A listener that never answers an HTTP request: the attempt times out.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = http_check(l.local_addr().unwrap(), "200", None);
        let started = std::time::Instant::now();
        assert_eq!(attempt(&silent).await, Err(Failure::Timeout));
        assert!(started.elapsed() >= silent.timeout);
    }

    #[tokio::test]
    async fn misc_exit_status_and_timeout() {
        let misc = |cmd: &str, timeout_ms: u64| Check {
            probe: Probe::Misc {
                argv: shlex::split(cmd).unwrap(),
            },
            timeout: Duration::from_millis(timeout_ms),
            ..http_check("198.51.100.11:80".parse().unwrap(), "200", None)
        };
        assert_eq!(attempt(&misc("true", 5000)).await, Ok(()));
        assert_eq!(
            attempt(&misc("sh -c 'exit 1'", 5000)).await,
            Err(Failure::Exit(1))
        );
        assert_eq!(
            attempt(&misc(
                r#"sh -c 'test "$XVS_CHECK_IP:$XVS_CHECK_PORT" = 198.51.100.11:80'"#,
                5000
            ))
            .await,
            Ok(())
        );
        assert_eq!(attempt(&misc("sleep 5", 100)).await, Err(Failure::Timeout));
        assert!(matches!(
            attempt(&misc("/nonexistent/check", 5000)).await,
            Err(Failure::Spawn(_))
        ));
    }
}
