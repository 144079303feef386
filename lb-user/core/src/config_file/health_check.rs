//! `health-check` tables of the configuration file: a service's (the default of its real
//! servers) and a real server's own, with the settings `xvsadm --check...` takes, named as
//! keepalived's are where they can be. Only what a table gives is set; the rest is inherited,
//! as on the command line (lb_user::check).

use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::{
    de::{DeValue, ValueDeserializer},
    Spanned,
};

use super::Checker;
use crate::check::{self, CheckKind, CheckSpec, StatusCodes};

/// The table's key, in a `[[service]]` and in a `[[service.real]]`.
pub(super) const KEY: &str = "health-check";

/// One `health-check` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Entry {
    #[serde(rename = "type")]
    kind: Option<Spanned<CheckKind>>,
    port: Option<Spanned<u16>>,
    path: Option<Spanned<String>>,
    status: Option<Spanned<toml::Value>>,
    digest: Option<Spanned<String>>,
    body: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    interval: Option<Spanned<toml::Value>>,
    timeout: Option<Spanned<toml::Value>>,
    retry: Option<Spanned<u32>>,
    retry_delay: Option<Spanned<toml::Value>>,
    rise: Option<Spanned<u32>>,
    inhibit: Option<Spanned<bool>>,
}

/// What the table of a real server is checked against: its service's table.
pub(super) enum Inherited<'a> {
    /// The service's check (empty when the service has no `health-check`).
    Service(&'a CheckSpec),
    /// The service's check is not known (it has errors, or the service itself does): only
    /// the table's own values are checked, so its errors are not reported twice.
    Unknown,
}

/// Parses and checks a `health-check` table (`at`: its key). `inherited`: None for a
/// service's table, its service's for a real server's. None after reporting what is wrong.
pub(super) fn parse(
    check: &mut Checker,
    at: Range<usize>,
    value: Spanned<DeValue>,
    inherited: Option<Inherited>,
) -> Option<CheckSpec> {
    let span = value.span();
    if !matches!(value.get_ref(), DeValue::Table(_)) {
        check.error(
            at,
            format!("`{KEY}` is a table: write it as [service.{KEY}] or [service.real.{KEY}]"),
        );
        return None;
    }
    let entry = match Entry::deserialize(ValueDeserializer::from(value)) {
        Ok(e) => e,
        Err(e) => {
            check.toml_error(&e, span);
            return None;
        }
    };
    let before = check.errors.len();
    let mut spec = CheckSpec {
        kind: entry.kind.as_ref().map(|k| *k.get_ref()),
        ..CheckSpec::default()
    };
    // Each value on its own, so an error points at it.
    let mut one = |what: Option<Range<usize>>,
                   set: &dyn Fn(&mut CheckSpec) -> Result<(), String>| {
        let Some(at) = what else { return };
        let mut alone = CheckSpec::default();
        let valid = set(&mut alone).and_then(|()| alone.validate(None));
        match valid {
            Ok(()) => {
                set(&mut spec).expect("valid above");
            }
            Err(msg) => check.error(at, msg),
        }
    };
    one(span_of(&entry.port), &|s| {
        s.port = entry.port.as_ref().map(|p| *p.get_ref());
        Ok(())
    });
    one(span_of(&entry.path), &|s| {
        s.path = entry.path.as_ref().map(|p| p.get_ref().clone());
        Ok(())
    });
    one(span_of(&entry.status), &|s| {
        s.status = entry
            .status
            .as_ref()
            .map(|v| status(v.get_ref()))
            .transpose()?;
        Ok(())
    });
    one(span_of(&entry.digest), &|s| {
        s.digest = entry.digest.as_ref().map(|d| d.get_ref().clone());
        Ok(())
    });
    one(span_of(&entry.body), &|s| {
        s.body = entry.body.as_ref().map(|b| b.get_ref().clone());
        Ok(())
    });
    one(span_of(&entry.command), &|s| {
        s.command = entry.command.as_ref().map(|c| c.get_ref().clone());
        Ok(())
    });
    one(span_of(&entry.interval), &|s| {
        s.interval_ms = entry
            .interval
            .as_ref()
            .map(|v| duration(v.get_ref()))
            .transpose()?;
        Ok(())
    });
    one(span_of(&entry.timeout), &|s| {
        s.timeout_ms = entry
            .timeout
            .as_ref()
            .map(|v| duration(v.get_ref()))
            .transpose()?;
        Ok(())
    });
    one(span_of(&entry.retry), &|s| {
        s.retry = entry.retry.as_ref().map(|r| *r.get_ref());
        Ok(())
    });
    one(span_of(&entry.retry_delay), &|s| {
        s.retry_delay_ms = entry
            .retry_delay
            .as_ref()
            .map(|v| duration(v.get_ref()))
            .transpose()?;
        Ok(())
    });
    one(span_of(&entry.rise), &|s| {
        s.rise = entry.rise.as_ref().map(|r| *r.get_ref());
        Ok(())
    });
    spec.inhibit = entry.inhibit.as_ref().map(|i| *i.get_ref());
    if let (Some(_), Some(b)) = (&entry.digest, &entry.body) {
        check.error(b.span(), "`digest` and `body`: give one of them");
    }
    // The values that go with some checkers only, against this table's checker or the one it
    // inherits (a service's table without `type` is its real servers' defaults for any).
    let kind = spec.kind.or(match &inherited {
        Some(Inherited::Service(s)) => s.kind,
        _ => None,
    });
    let http = "type = \"http\" and \"https\"";
    // (A value already refused is not reported again.)
    let given = |at: Option<Range<usize>>, set: bool| at.filter(|_| set);
    let specific = [
        (
            "port",
            given(span_of(&entry.port), spec.port.is_some()),
            "every type but \"misc\"",
            kind != Some(CheckKind::Misc),
        ),
        (
            "path",
            given(span_of(&entry.path), spec.path.is_some()),
            http,
            kind.is_some_and(is_http),
        ),
        (
            "status",
            given(span_of(&entry.status), spec.status.is_some()),
            http,
            kind.is_some_and(is_http),
        ),
        (
            "digest",
            given(span_of(&entry.digest), spec.digest.is_some()),
            http,
            kind.is_some_and(is_http),
        ),
        (
            "body",
            given(span_of(&entry.body), spec.body.is_some()),
            http,
            kind.is_some_and(is_http),
        ),
        (
            "command",
            given(span_of(&entry.command), spec.command.is_some()),
            "type = \"misc\"",
            kind == Some(CheckKind::Misc),
        ),
    ];
    if let Some(kind) = kind.filter(|k| *k != CheckKind::None) {
        for (name, at, applies_to, applies) in &specific {
            if let (Some(at), false) = (at, applies) {
                check.error(
                    at.clone(),
                    format!("`{name}` does not apply to type = \"{kind}\" (only to {applies_to})"),
                );
            }
        }
    }
    if let Some(Inherited::Service(service)) = inherited {
        let given = entry.kind.is_some()
            || entry.port.is_some()
            || entry.path.is_some()
            || entry.status.is_some()
            || entry.digest.is_some()
            || entry.body.is_some()
            || entry.command.is_some()
            || entry.interval.is_some()
            || entry.timeout.is_some()
            || entry.retry.is_some()
            || entry.retry_delay.is_some()
            || entry.rise.is_some()
            || entry.inhibit.is_some();
        if given && kind.is_none() {
            check.error(
                at.clone(),
                "this `health-check` needs `type` (here, or in the service's `health-check` \
                 for all of its real servers)",
            );
        }
        if kind == Some(CheckKind::Misc) && entry.command.is_none() && service.command.is_none() {
            check.error(
                at,
                "type = \"misc\" needs `command` (here, or in the service's `health-check`)",
            );
        }
    }
    (check.errors.len() == before).then_some(spec)
}

fn span_of<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
    v.as_ref().map(Spanned::span)
}

fn is_http(k: CheckKind) -> bool {
    matches!(k, CheckKind::Http | CheckKind::Https)
}

/// `status`: `200`, `"200-299,304"` or a list of both (`[200, "301-302"]`).
fn status(v: &toml::Value) -> Result<StatusCodes, String> {
    let text = match v {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(list) => list
            .iter()
            .map(|v| match v {
                toml::Value::Integer(n) => Ok(n.to_string()),
                toml::Value::String(s) => Ok(s.clone()),
                other => Err(format!("Illegal status code: {other}")),
            })
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        other => {
            return Err(format!(
                "Illegal status codes: {other} (e.g. 200, \"200-299,304\" or [200, \"301-302\"])"
            ))
        }
    };
    text.parse()
}

/// A timer: seconds as a number (`2`, `1.5`, keepalived's way) or a string with a unit
/// (`"500ms"`, `"1.5s"`, `"2m"`).
fn duration(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(n) => check::parse_duration_ms(&n.to_string()),
        toml::Value::Float(f) => check::parse_duration_ms(&f.to_string()),
        toml::Value::String(s) => check::parse_duration_ms(s),
        other => Err(format!(
            "Illegal duration: {other} (seconds, or a string such as \"500ms\", \"1.5s\", \"2m\")"
        )),
    }
}

/// A `health-check` table as `xvsadm export` writes it.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct Out {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<CheckKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_delay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rise: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inhibit: Option<bool>,
}

/// The table for a spec; None for an empty one (nothing given at that level).
pub(super) fn render(spec: &CheckSpec) -> Option<Out> {
    (!spec.is_empty()).then(|| Out {
        kind: spec.kind,
        port: spec.port,
        path: spec.path.clone(),
        status: spec.status.as_ref().map(ToString::to_string),
        digest: spec.digest.clone(),
        body: spec.body.clone(),
        command: spec.command.clone(),
        interval: spec.interval_ms.map(check::format_ms),
        timeout: spec.timeout_ms.map(check::format_ms),
        retry: spec.retry,
        retry_delay: spec.retry_delay_ms.map(check::format_ms),
        rise: spec.rise,
        inhibit: spec.inhibit,
    })
}
