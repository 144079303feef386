//! Health checks as configured, in keepalived's vocabulary: a checker per real server
//! (TCP_CHECK, HTTP_GET, SSL_GET, MISC_CHECK) with keepalived's timers (`delay_loop`,
//! `connect_timeout`, `retry`, `delay_before_retry`) and `inhibit_on_failure`, plus a rise count
//! (successes needed before a failed server takes traffic again).
//!
//! As in keepalived, a virtual service's settings are the defaults of its real servers: a
//! [`CheckSpec`] holds only what was given at its level, and [`resolve`] merges a real server's
//! spec over its service's over the built-in defaults into the [`Check`] that runs.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

/// Which checker (keepalived's TCP_CHECK, HTTP_GET, SSL_GET, MISC_CHECK), or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// TCP connect (TCP_CHECK).
    Tcp,
    /// HTTP/1.0 GET with status, digest or body checks (HTTP_GET).
    Http,
    /// The same over TLS, certificate not verified (SSL_GET).
    Https,
    /// A command: exit 0 up, anything else down (MISC_CHECK).
    Misc,
    /// Not checked: always up (overrides a service's default).
    None,
}

impl CheckKind {
    /// The `--check` name.
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Https => "https",
            CheckKind::Misc => "misc",
            CheckKind::None => "none",
        }
    }

    fn is_http(self) -> bool {
        matches!(self, CheckKind::Http | CheckKind::Https)
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CheckKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "tcp" => CheckKind::Tcp,
            "http" => CheckKind::Http,
            "https" => CheckKind::Https,
            "misc" => CheckKind::Misc,
            "none" => CheckKind::None,
            _ => {
                return Err(format!(
                    "Illegal check type: {s} (tcp, http, https, misc or none)"
                ))
            }
        })
    }
}

/// HTTP status codes a check accepts (keepalived's `status_code 200-299 503`), as ranges.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StatusCodes(pub Vec<(u16, u16)>);

impl Default for StatusCodes {
    /// keepalived's default: any 2xx.
    fn default() -> Self {
        StatusCodes(vec![(200, 299)])
    }
}

impl StatusCodes {
    /// Whether `code` is accepted.
    pub fn accepts(&self, code: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code))
    }
}

impl fmt::Display for StatusCodes {
    /// `200`, `200-299`, `200,301-302`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for StatusCodes {
    type Err = String;
    /// A comma-separated list of codes and ranges, each within 100..=599.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("Illegal status code list: {s} (e.g. 200, 200-299 or 200,301-302)");
        let code = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
        };
        let mut out = Vec::new();
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (code(a).ok_or_else(bad)?, code(b).ok_or_else(bad)?),
                None => {
                    let c = code(part).ok_or_else(bad)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(bad());
            }
            out.push((lo, hi));
        }
        Ok(StatusCodes(out))
    }
}

impl Serialize for StatusCodes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StatusCodes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A health check as given at one level (a service's default, or a real server's own): only
/// what was given; the rest is inherited (real server from service, service from the built-in
/// defaults). Serialised with every unset field left out, so an empty spec disappears.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// `--check`: the checker.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<CheckKind>,
    /// `--check-port` (keepalived `connect_port`); default the real server's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `--check-path` (HTTP): the URL path GET asks for; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `--check-status` (HTTP `status_code`); default 200-299.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusCodes>,
    /// `--check-digest` (HTTP `digest`): MD5 of the body, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `--check-body`: a substring the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `--check-command` (MISC_CHECK `misc_path`): program and arguments, shell-quoted words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `--check-interval` (`delay_loop`), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// `--check-timeout` (`connect_timeout`, MISC's `misc_timeout`), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `--check-retry` (`retry`): failed checks of an up server retried before it is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
    /// `--check-retry-delay` (`delay_before_retry`), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_ms: Option<u64>,
    /// `--check-rise`: consecutive successes before a down server is up again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    /// `--check-inhibit` (`inhibit_on_failure`): a down server keeps its place with weight 0
    /// (its connections stay) instead of leaving the tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inhibit: Option<bool>,
}

/// Which checkers an option goes with.
type AppliesTo = fn(CheckKind) -> bool;

/// Built-in defaults. keepalived's own, except `delay_loop`: keepalived's 60 s is longer than
/// most want; 6 s is what keepalived's sample configurations use.
pub mod defaults {
    use std::time::Duration;

    /// `delay_loop`.
    pub const INTERVAL: Duration = Duration::from_secs(6);
    /// `connect_timeout` (keepalived: 5 s).
    pub const TIMEOUT: Duration = Duration::from_secs(5);
    /// `retry` (keepalived: 1, MISC_CHECK 0).
    pub const RETRY: u32 = 1;
    /// `retry` of MISC_CHECK.
    pub const RETRY_MISC: u32 = 0;
    /// `delay_before_retry` (keepalived: 1 s, HTTP_GET/SSL_GET 3 s).
    pub const RETRY_DELAY: Duration = Duration::from_secs(1);
    /// `delay_before_retry` of HTTP_GET and SSL_GET.
    pub const RETRY_DELAY_HTTP: Duration = Duration::from_secs(3);
    /// Successes before a down server is up again (keepalived has no such count: 1).
    pub const RISE: u32 = 2;
    /// GET's path.
    pub const PATH: &str = "/";
}

/// Bounds of the timers and counts.
const MIN_INTERVAL_MS: u64 = 10;
const MAX_TIMER_MS: u64 = 86_400_000;
const MAX_RETRY: u32 = 1000;
const MAX_RISE: u32 = 1000;

/// What a check verifies of an HTTP answer's body, besides its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyCheck {
    /// MD5 of the body (lowercase hex), keepalived's `digest`.
    Digest(String),
    /// The body contains this.
    Contains(String),
}

/// What one check attempt does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// TCP connect.
    Tcp,
    /// GET over HTTP/1.0 (or TLS).
    Http {
        /// Over TLS (SSL_GET), certificate not verified.
        tls: bool,
        /// Path asked for.
        path: String,
        /// Accepted status codes.
        status: StatusCodes,
        /// Body check, if any.
        body: Option<BodyCheck>,
    },
    /// Run a program: exit 0 up, anything else (or the timeout) down.
    Misc {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

/// A resolved check: what runs against one real server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What an attempt does.
    pub probe: Probe,
    /// Where TCP, HTTP and HTTPS checks connect: the real server's address and the check port.
    pub target: SocketAddr,
    /// Between checks (start to start).
    pub interval: Duration,
    /// An attempt's time limit (connect, request and answer; a command's run).
    pub timeout: Duration,
    /// Retries of a failed check of an up server before it is down.
    pub retry: u32,
    /// Before such a retry.
    pub retry_delay: Duration,
    /// Consecutive successes before a down server is up again.
    pub rise: u32,
    /// Down means weight 0 (established connections stay) instead of removal.
    pub inhibit: bool,
}

impl Check {
    /// The checker's name.
    pub fn kind(&self) -> CheckKind {
        match &self.probe {
            Probe::Tcp => CheckKind::Tcp,
            Probe::Http { tls: false, .. } => CheckKind::Http,
            Probe::Http { tls: true, .. } => CheckKind::Https,
            Probe::Misc { .. } => CheckKind::Misc,
        }
    }

    /// The longest a failure takes to be noticed, with attempts that fail at once (a refused
    /// connection): the interval to the next check, then `retry` retries after their delay.
    /// Attempts that time out add `timeout` each.
    pub fn detection_time(&self, attempts_time_out: bool) -> Duration {
        let attempt = if attempts_time_out {
            self.timeout
        } else {
            Duration::ZERO
        };
        self.interval + self.retry_delay * self.retry + attempt * (self.retry + 1)
    }
}

impl CheckSpec {
    /// Whether nothing is given at this level.
    pub fn is_empty(&self) -> bool {
        *self == CheckSpec::default()
    }

    /// The options set at this level that only some checkers take, with their option names.
    fn specific(&self) -> Vec<(&'static str, AppliesTo)> {
        let mut v: Vec<(&'static str, AppliesTo)> = Vec::new();
        let http = |k: CheckKind| k.is_http();
        if self.port.is_some() {
            v.push(("--check-port", |k| k != CheckKind::Misc));
        }
        if self.path.is_some() {
            v.push(("--check-path", http));
        }
        if self.status.is_some() {
            v.push(("--check-status", http));
        }
        if self.digest.is_some() {
            v.push(("--check-digest", http));
        }
        if self.body.is_some() {
            v.push(("--check-body", http));
        }
        if self.command.is_some() {
            v.push(("--check-command", |k| k == CheckKind::Misc));
        }
        v
    }

    /// Checks this level on its own: values in range, and options that go with the checker
    /// (`kind`: this level's, or the one it inherits; None when not known yet, as for a
    /// service's defaults without `--check`).
    pub fn validate(&self, kind: Option<CheckKind>) -> Result<(), String> {
        if let Some(ms) = self.interval_ms {
            if !(MIN_INTERVAL_MS..=MAX_TIMER_MS).contains(&ms) {
                return Err(format!(
                    "Illegal check interval: {} (10ms to 24h)",
                    format_ms(ms)
                ));
            }
        }
        for (what, v) in [
            ("check timeout", self.timeout_ms),
            ("check retry delay", self.retry_delay_ms),
        ] {
            if let Some(ms) = v {
                if !(1..=MAX_TIMER_MS).contains(&ms) {
                    return Err(format!("Illegal {what}: {} (1ms to 24h)", format_ms(ms)));
                }
            }
        }
        if self.retry.is_some_and(|r| r > MAX_RETRY) {
            return Err(format!("Illegal check retry count (0 to {MAX_RETRY})"));
        }
        if self.rise.is_some_and(|r| !(1..=MAX_RISE).contains(&r)) {
            return Err(format!("Illegal check rise count (1 to {MAX_RISE})"));
        }
        if self.port == Some(0) {
            return Err("Illegal check port: 0".into());
        }
        if let Some(p) = &self.path {
            if !p.starts_with('/') || p.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
                return Err(format!(
                    "Illegal check path: {p:?} (an absolute URL path such as /health)"
                ));
            }
        }
        if let Some(d) = &self.digest {
            if d.len() != 32 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "Illegal check digest: {d} (an MD5 digest: 32 hexadecimal digits)"
                ));
            }
        }
        if self.digest.is_some() && self.body.is_some() {
            return Err("--check-digest and --check-body: give one of them".into());
        }
        if let Some(c) = &self.command {
            match shlex::split(c) {
                Some(words) if !words.is_empty() => {}
                _ => return Err(format!("Illegal check command: {c:?}")),
            }
        }
        if let Some(kind) = kind {
            for (option, applies) in self.specific() {
                if !applies(kind) {
                    return Err(format!("{option} does not apply to --check {kind}"));
                }
            }
        }
        Ok(())
    }
}

/// The check that runs against a real server of a service: the real server's spec over the
/// service's over the built-in defaults. None when neither names a checker (a real server
/// that gives check options then is an error: they would do nothing), or `none` wins.
/// The service's options that do not go with the real server's checker are not inherited (a
/// service default of `--check http --check-path /h` and a real server's `--check tcp`).
pub fn resolve(
    service: &CheckSpec,
    real: &CheckSpec,
    real_addr: SocketAddr,
) -> Result<Option<Check>, String> {
    let kind = match real.kind.or(service.kind) {
        None if !real.is_empty() => {
            return Err(format!(
                "real server {real_addr} has check options but no checker: give --check TYPE \
                 (on it, or on the service for all its real servers)"
            ))
        }
        None | Some(CheckKind::None) => return Ok(None),
        Some(k) => k,
    };
    service.validate(service.kind)?;
    real.validate(Some(kind))?;
    // An inherited option only where it goes with the checker.
    let pick = |own: &Option<String>, inherited: &Option<String>, applies: bool| {
        own.clone()
            .or(if applies { inherited.clone() } else { None })
    };
    let http = kind.is_http();
    let ms = Duration::from_millis;
    let port = real
        .port
        .or(if kind != CheckKind::Misc {
            service.port
        } else {
            None
        })
        .unwrap_or(real_addr.port());
    if port == 0 && kind != CheckKind::Misc {
        return Err(format!(
            "the check of real server {} needs --check-port (it has no port of its own)",
            real_addr.ip()
        ));
    }
    let probe = match kind {
        CheckKind::Tcp => Probe::Tcp,
        CheckKind::Http | CheckKind::Https => {
            // The real server's body check replaces the service's, whichever kind it is.
            let (digest, body) = if real.digest.is_some() || real.body.is_some() {
                (real.digest.clone(), real.body.clone())
            } else {
                (service.digest.clone(), service.body.clone())
            };
            Probe::Http {
                tls: kind == CheckKind::Https,
                path: pick(&real.path, &service.path, http)
                    .unwrap_or_else(|| defaults::PATH.to_string()),
                status: real
                    .status
                    .clone()
                    .or(service.status.clone())
                    .unwrap_or_default(),
                body: match (digest, body) {
                    (Some(d), _) => Some(BodyCheck::Digest(d.to_ascii_lowercase())),
                    (None, Some(b)) => Some(BodyCheck::Contains(b)),
                    (None, None) => None,
                },
            }
        }
        CheckKind::Misc => {
            let command = real
                .command
                .clone()
                .or(service.command.clone())
                .ok_or_else(|| {
                    format!(
                        "--check misc for real server {real_addr} needs --check-command 'PROGRAM ARGS'"
                    )
                })?;
            Probe::Misc {
                argv: shlex::split(&command).unwrap_or_default(),
            }
        }
        CheckKind::None => unreachable!("handled above"),
    };
    let (retry_default, retry_delay_default) = match kind {
        CheckKind::Misc => (defaults::RETRY_MISC, defaults::RETRY_DELAY),
        CheckKind::Http | CheckKind::Https => (defaults::RETRY, defaults::RETRY_DELAY_HTTP),
        _ => (defaults::RETRY, defaults::RETRY_DELAY),
    };
    Ok(Some(Check {
        probe,
        target: SocketAddr::new(real_addr.ip(), port),
        interval: real
            .interval_ms
            .or(service.interval_ms)
            .map_or(defaults::INTERVAL, ms),
        timeout: real
            .timeout_ms
            .or(service.timeout_ms)
            .map_or(defaults::TIMEOUT, ms),
        retry: real.retry.or(service.retry).unwrap_or(retry_default),
        retry_delay: real
            .retry_delay_ms
            .or(service.retry_delay_ms)
            .map_or(retry_delay_default, ms),
        rise: real.rise.or(service.rise).unwrap_or(defaults::RISE),
        inhibit: real.inhibit.or(service.inhibit).unwrap_or(false),
    }))
}

/// Parses a duration as keepalived's timers and the usual suffixes take it: `2` or `1.5`
/// (seconds), `1s`, `1.5s`, `500ms`, `2m`; kept in milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("Illegal duration: {s} (e.g. 1s, 500ms, 1.5s or 2m)");
    let t = s.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (t, 1000.0)
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let v: f64 = number.parse().map_err(|_| bad())?;
    let ms = (v * scale).round();
    if !ms.is_finite() || ms < 0.0 || ms > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    // A fraction of a millisecond is not a timer xvs keeps.
    if (v * scale - ms).abs() > 1e-6 {
        return Err(bad());
    }
    Ok(ms as u64)
}

/// A duration as `-S` writes it: `6s`, `1.5s`, `500ms`.
pub fn format_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 1000 && ms.is_multiple_of(100) {
        format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
    } else {
        format!("{ms}ms")
    }
}

/// A duration for people and logs (`1.5s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    format_ms(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: CheckKind) -> CheckSpec {
        CheckSpec {
            kind: Some(kind),
            ..Default::default()
        }
    }

    #[test]
    fn durations_parse_as_keepalived_timers_and_print_back() {
        for (s, ms) in [
            ("1", 1000),
            ("1.5", 1500),
            ("1s", 1000),
            ("0.25s", 250),
            ("500ms", 500),
            ("2m", 120_000),
        ] {
            assert_eq!(parse_duration_ms(s), Ok(ms), "{s}");
        }
        for bad in ["", "s", "-1s", "1h", "1.0005s", "abc", "1e3"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
        for (ms, s) in [
            (6000, "6s"),
            (1500, "1.5s"),
            (500, "500ms"),
            (1250, "1250ms"),
        ] {
            assert_eq!(format_ms(ms), s);
            assert_eq!(parse_duration_ms(s), Ok(ms));
        }
    }

    #[test]
    fn status_codes_as_keepalived_status_code() {
        let c: StatusCodes = "200,301-302".parse().unwrap();
        assert!(c.accepts(200) && c.accepts(302) && !c.accepts(303) && !c.accepts(201));
        assert_eq!(c.to_string(), "200,301-302");
        assert!(StatusCodes::default().accepts(204));
        assert!(!StatusCodes::default().accepts(503));
        for bad in ["", "2000", "299-200", "99", "200,", "ok"] {
            assert!(bad.parse::<StatusCodes>().is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#""200,301-302""#,
            "a string in JSON and TOML"
        );
    }

    #[test]
    fn defaults_follow_keepalived() {
        let real: SocketAddr = "198.51.100.11:80".parse().unwrap();
        let c = resolve(&CheckSpec::default(), &spec(CheckKind::Http), real)
            .unwrap()
            .unwrap();
        assert_eq!(c.target, real);
        assert_eq!(
            (
                c.interval,
                c.timeout,
                c.retry,
                c.retry_delay,
                c.rise,
                c.inhibit
            ),
            (
                Duration::from_secs(6),
                Duration::from_secs(5),
                1,
                Duration::from_secs(3),
                2,
                false
            )
        );
        assert_eq!(
            c.probe,
            Probe::Http {
                tls: false,
                path: "/".into(),
                status: StatusCodes::default(),
                body: None
            }
        );
        let misc = CheckSpec {
            command: Some("sh -c 'exit 1'".into()),
            ..spec(CheckKind::Misc)
        };
        let c = resolve(&CheckSpec::default(), &misc, real)
            .unwrap()
            .unwrap();
        assert_eq!((c.retry, c.retry_delay), (0, Duration::from_secs(1)));
        assert_eq!(
            c.probe,
            Probe::Misc {
                argv: vec!["sh".into(), "-c".into(), "exit 1".into()]
            }
        );
        // Detection: interval, then one retry after its delay.
        let tcp = resolve(&CheckSpec::default(), &spec(CheckKind::Tcp), real)
            .unwrap()
            .unwrap();
        assert_eq!(tcp.detection_time(false), Duration::from_secs(7));
        assert_eq!(tcp.detection_time(true), Duration::from_secs(17));
    }

    #[test]
    fn real_servers_inherit_the_service_defaults() {
        let real: SocketAddr = "198.51.100.11:80".parse().unwrap();
        let service = CheckSpec {
            kind: Some(CheckKind::Http),
            path: Some("/health".into()),
            interval_ms: Some(1000),
            inhibit: Some(true),
            ..Default::default()
        };
        // Nothing of its own: the service's check.
        let c = resolve(&service, &CheckSpec::default(), real)
            .unwrap()
            .unwrap();
        assert!(matches!(&c.probe, Probe::Http { path, .. } if path == "/health"));
        assert_eq!((c.interval, c.inhibit), (Duration::from_secs(1), true));
        // Its own port and inhibit, the rest inherited.
        let own = CheckSpec {
            port: Some(8080),
            inhibit: Some(false),
            ..Default::default()
        };
        let c = resolve(&service, &own, real).unwrap().unwrap();
        assert_eq!(c.target, "198.51.100.11:8080".parse().unwrap());
        assert!(!c.inhibit);
        // Its own checker: the service's HTTP options are not inherited, its timers are.
        let c = resolve(&service, &spec(CheckKind::Tcp), real)
            .unwrap()
            .unwrap();
        assert_eq!(c.probe, Probe::Tcp);
        assert_eq!(c.interval, Duration::from_secs(1));
        // `none` turns the service's check off for this server, options and all.
        assert_eq!(resolve(&service, &spec(CheckKind::None), real), Ok(None));
        assert_eq!(
            resolve(&CheckSpec::default(), &CheckSpec::default(), real),
            Ok(None)
        );
        // Options of a real server with no checker anywhere would do nothing.
        let e = resolve(&CheckSpec::default(), &own, real).unwrap_err();
        assert!(e.contains("no checker"), "{e}");
    }

    #[test]
    fn options_that_do_not_go_with_the_checker_are_refused() {
        let real: SocketAddr = "198.51.100.11:80".parse().unwrap();
        let bad: [(CheckSpec, CheckSpec, &str); 8] = [
            (
                CheckSpec::default(),
                CheckSpec {
                    path: Some("/h".into()),
                    ..spec(CheckKind::Tcp)
                },
                "--check-path does not apply to --check tcp",
            ),
            (
                spec(CheckKind::Tcp),
                CheckSpec {
                    digest: Some("0".repeat(32)),
                    ..Default::default()
                },
                "--check-digest does not apply to --check tcp",
            ),
            (
                CheckSpec::default(),
                spec(CheckKind::Misc),
                "needs --check-command",
            ),
            (
                CheckSpec::default(),
                CheckSpec {
                    digest: Some("xyz".into()),
                    ..spec(CheckKind::Http)
                },
                "32 hexadecimal digits",
            ),
            (
                CheckSpec::default(),
                CheckSpec {
                    digest: Some("0".repeat(32)),
                    body: Some("ok".into()),
                    ..spec(CheckKind::Http)
                },
                "give one of them",
            ),
            (
                CheckSpec::default(),
                CheckSpec {
                    interval_ms: Some(5),
                    ..spec(CheckKind::Tcp)
                },
                "Illegal check interval: 5ms",
            ),
            (
                CheckSpec::default(),
                CheckSpec {
                    rise: Some(0),
                    ..spec(CheckKind::Tcp)
                },
                "rise",
            ),
            (
                CheckSpec::default(),
                CheckSpec {
                    path: Some("health".into()),
                    ..spec(CheckKind::Http)
                },
                "absolute URL path",
            ),
        ];
        for (service, own, needle) in bad {
            let e = resolve(&service, &own, real).expect_err(needle);
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
        // A group's real server without a port needs a check port.
        let e = resolve(
            &CheckSpec::default(),
            &spec(CheckKind::Tcp),
            "198.51.100.11:0".parse().unwrap(),
        )
        .unwrap_err();
        assert!(e.contains("needs --check-port"), "{e}");
    }

    #[test]
    fn an_empty_spec_disappears_from_json() {
        assert_eq!(serde_json::to_string(&CheckSpec::default()).unwrap(), "{}");
        let s = CheckSpec {
            interval_ms: Some(1000),
            ..spec(CheckKind::Tcp)
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"type":"tcp","interval_ms":1000}"#);
        assert_eq!(serde_json::from_str::<CheckSpec>(&json).unwrap(), s);
    }
}
