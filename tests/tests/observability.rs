//! The monitoring that ships in examples/: the Prometheus alerting rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), the Grafana dashboard parses and its
//! queries are valid PromQL, and every metric the dashboard and the rules query is one a
//! running xvsd exports (xvsd started with every feature that adds metrics: health checks, a
//! quorum and a sorry server, announcements, both sync daemons). The last test needs root.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use xvs_tests::{daemon::Xvsd, netns, poll};

/// Metric names the queries may use that xvsd does not export, with the reason.
const NOT_XVSD: &[(&str, &str)] = &[(
    "up",
    "Prometheus's own series per scrape target (XvsdDown: xvsd does not answer)",
)];

/// PromQL's words that look like metric names but are not: aggregations (which may take a
/// `by (...)` before their parenthesis), operators and modifiers.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn dashboard_path() -> PathBuf {
    examples().join("grafana/xvs-dashboard.json")
}

fn rules_path() -> PathBuf {
    examples().join("prometheus/xvs-alerts.yml")
}

/// Runs promtool (Debian's `prometheus` package, which `cargo xtask test` installs); fails with
/// the reason when it is missing or refuses.
fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool cannot run ({e}): it comes with Debian's prometheus package, which \
                 `cargo xtask test` installs (xtask/src/bootstrap.rs)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The metric names a PromQL expression reads: identifiers outside strings, label matchers,
/// ranges and grouping lists, that are not function calls or keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings, then everything in {} and [], go first (label names and values, durations).
    let mut plain = String::new();
    let mut quote = None;
    let mut depth = 0usize;
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{' | '[') => depth += 1,
            (None, '}' | ']') => depth = depth.saturating_sub(1),
            (None, c) if depth == 0 => plain.push(c),
            _ => {}
        }
        if quote.is_some() || depth > 0 {
            plain.push(' ');
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            // A Grafana variable ($__rate_interval, $instance).
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            // A number or a duration (5m, 0.99, 1e3).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !is_start(c) {
            if c == ')' {
                skip_group = false;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
        let lower = word.to_ascii_lowercase();
        if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&lower.as_str())
            && next == Some('(')
        {
            // Label names until the closing parenthesis.
            skip_group = true;
            continue;
        }
        if skip_group || next == Some('(') || KEYWORDS.contains(&lower.as_str()) {
            continue;
        }
        names.insert(word);
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets (rows' panels too) and the
/// template variables' queries (`label_values(metric{...}, label)`: its metric part).
fn dashboard_queries(d: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    for var in d["templating"]["list"].as_array().expect("templating.list") {
        if let Some(q) = var["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.rsplit_once(','))
                .unwrap_or_else(|| {
                    panic!("template query {q:?} is not label_values(METRIC, LABEL)")
                });
            out.push(inner.0.to_string());
        }
    }
    out
}

/// The `expr:` of every rule of a rules file (one line each, as xvs-alerts.yml writes them),
/// with the number of alerts it declares.
fn rule_queries(text: &str) -> (Vec<String>, usize) {
    let exprs = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect();
    let alerts = text
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    (exprs, alerts)
}

fn dashboard() -> serde_json::Value {
    let text = fs::read_to_string(dashboard_path()).expect("examples/grafana/xvs-dashboard.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// The names every query of the dashboard and the rules uses.
fn queried_names() -> BTreeSet<String> {
    let (rules, _) = rule_queries(&fs::read_to_string(rules_path()).unwrap());
    dashboard_queries(&dashboard())
        .iter()
        .chain(&rules)
        .flat_map(|e| metric_names(e))
        .collect()
}

#[test]
fn the_metric_name_extractor_finds_metrics_only() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (instance, le) (rate(xvs_real_check_duration_seconds_bucket{instance=~"$instance", real!="x_y"}[$__rate_interval]))) > 0.5"#
        ),
        BTreeSet::from(["xvs_real_check_duration_seconds_bucket".to_string()])
    );
    assert_eq!(
        metric_names(
            "count by (service) (count by (service, digest) (xvs_service_table_info)) > 1 \
             or xvs_a / on (instance) group_left (mode) xvs_b offset 5m unless up == 0"
        ),
        BTreeSet::from(["xvs_service_table_info", "xvs_a", "xvs_b", "up"].map(String::from))
    );
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = examples().join("prometheus");
    let out = promtool(&["check", "rules", "xvs-alerts.yml"], &dir);
    let (exprs, alerts) = rule_queries(&fs::read_to_string(rules_path()).unwrap());
    assert!(
        out.contains(&format!("SUCCESS: {alerts} rules found")),
        "{out}"
    );
    // Every alert's expression was read (the metric check below relies on it).
    assert_eq!(exprs.len(), alerts, "one single-line expr per alert");
    for alert in [
        "XvsdDown",
        "XvsRealServerDown",
        "XvsServiceBelowQuorum",
        "XvsVipWithdrawn",
        "XvsConnTableNearlyFull",
        "XvsDropsRising",
        "XvsSyncBackupNotHoldingTables",
    ] {
        assert!(
            fs::read_to_string(rules_path())
                .unwrap()
                .contains(&format!("- alert: {alert}\n")),
            "{alert} missing"
        );
    }
    let out = promtool(&["test", "rules", "xvs-alerts.test.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_dashboard_is_importable_and_its_queries_are_valid_promql() {
    let d = dashboard();
    assert_eq!(
        d["__inputs"][0]["pluginId"], "prometheus",
        "a Prometheus input"
    );
    let ds = d["__inputs"][0]["name"].as_str().unwrap();
    assert!(
        d["schemaVersion"].as_u64().unwrap() >= 36,
        "a current Grafana's schema"
    );
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["instance", "service"]);
    // Every panel queries the imported data source.
    let text = serde_json::to_string(&d).unwrap();
    assert_eq!(
        text.matches("\"uid\":\"${").count(),
        text.matches(&format!("\"uid\":\"${{{ds}}}\"")).count()
    );
    let queries = dashboard_queries(&d);
    assert!(queries.len() > 40, "{} queries", queries.len());
    // promtool checks PromQL in rule files: each query, its Grafana variables given values,
    // becomes a recording rule.
    let dir = std::env::temp_dir().join("xvs-dashboard-promql");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$service", ".*");
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&q).unwrap()
        ));
    }
    fs::write(dir.join("dashboard.yml"), rules).unwrap();
    let out = promtool(&["check", "rules", "dashboard.yml"], &dir);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{out}"
    );
    let _ = fs::remove_dir_all(&dir);
}

const METRICS: &str = "127.0.0.1:9931";
const VIP: &str = "203.0.113.10";

/// The metric names of a scrape (sample lines; histograms' `_bucket`, `_sum`, `_count`).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[test]
fn every_metric_the_dashboard_and_the_rules_query_is_exported_by_xvsd() {
    let queried = queried_names();
    assert!(queried.len() > 40, "{queried:?}");
    let mut d = Xvsd::new("obs").unwrap();
    let ns = "xvs-obs-d";
    // The real and sorry servers' MACs known at once: xvsd resolves them before it answers.
    for (ip, mac) in [
        ("198.51.100.11", "02:00:00:00:00:11"),
        ("198.51.100.13", "02:00:00:00:00:13"),
    ] {
        netns::ip(&[
            "-n",
            ns,
            "neigh",
            "add",
            ip,
            "lladdr",
            mac,
            "dev",
            "d0",
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    d.start(&["--metrics", METRICS, "--announce-table", "100"])
        .unwrap();
    // A checked real server (misc: always up), a quorum, a sorry server: their metrics.
    d.xvsadm_ok(&[
        "-A",
        "-t",
        &format!("{VIP}:80"),
        "-s",
        "rr",
        "--quorum",
        "1",
        "--sorry-server",
        "198.51.100.13:80",
    ])
    .unwrap();
    d.xvsadm_ok(&[
        "-a",
        "-t",
        &format!("{VIP}:80"),
        "-r",
        "198.51.100.11:80",
        "-g",
        "--check",
        "misc",
        "--check-command",
        "true",
        "--check-interval",
        "200ms",
    ])
    .unwrap();
    // Both sync daemons: master and backup series.
    for role in ["master", "backup"] {
        d.xvsadm_ok(&["--start-daemon", role, "--mcast-interface", "d0"])
            .unwrap();
    }
    // A datagram that is no sync message, to the sync group: the backup counts a decode error
    // (xvs_sync_errors_total has a series from the first error on).
    netns::ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", "d0"]).unwrap();
    // bash's /dev/udp: no other tool needed.
    let sent = netns::run(
        netns::cmd_in(ns, "bash")
            .args(["-c", "echo not-a-sync-message > /dev/udp/224.0.0.81/8848"]),
    )
    .unwrap();
    assert!(sent.status.success(), "{sent:?}");
    let scrape = || {
        let out = netns::cmd_in(ns, "curl")
            .args(["-s", "-m", "5", &format!("http://{METRICS}/metrics")])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let missing = |text: &str| -> BTreeSet<String> {
        let have = exported(text);
        queried
            .iter()
            .filter(|n| !have.contains(*n) && !NOT_XVSD.iter().any(|(x, _)| x == n))
            .cloned()
            .collect()
    };
    // The health series appear with the first check's result: poll until the set is complete.
    let result = poll(Duration::from_secs(10), "every queried metric", || {
        let text = scrape()?;
        missing(&text).is_empty().then_some(text)
    });
    let text = match result {
        Ok(t) => t,
        Err(e) => {
            let last = scrape().unwrap_or_default();
            panic!(
                "{e}: the dashboard or the rules query metrics xvsd does not export: {:?}\n\
                 xvsd exports: {:?}\n{}",
                missing(&last),
                exported(&last),
                d.log()
            );
        }
    };
    // The feature-dependent series are really there (not only their names by chance).
    for line in [
        "xvs_real_health_up{service=\"TCP 203.0.113.10:80\",real=\"198.51.100.11:80\"} 1",
        "xvs_service_quorum_up{service=\"TCP 203.0.113.10:80\"} 1",
        "xvs_vip_announced{vip=\"203.0.113.10\"} 1",
        "xvs_sync_errors_total{role=\"backup\",syncid=\"0\",reason=\"decode\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    for (name, why) in NOT_XVSD {
        assert!(
            !exported(&text).contains(*name),
            "{name} is exported after all ({why}): drop the exception"
        );
    }
}
