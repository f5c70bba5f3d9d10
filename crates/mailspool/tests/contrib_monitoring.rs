//! The monitoring files in contrib/ stay true to what /metrics exports: every metric
//! name the alert rules and the Grafana dashboard use is one mailspool exports, and the
//! rules pass Prometheus's own checker and their unit tests (promtool, from Debian's
//! `prometheus` package; skipped without it unless CI=true).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn contrib(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib")
        .join(rel)
}

/// Every `mailspool_...` word in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("mailspool_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not part of a longer word (e.g. a label value or a file name).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '/') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn rules_and_dashboard_use_only_exported_metrics() {
    // The queue gauges appear once the sampler has counted a spool: give them a value.
    let m = mailspool_metrics::global();
    m.queue_nodes
        .get_or_create(&mailspool_metrics::TierLabels {
            tier: "0".into(),
            held: "false",
        })
        .set(1);
    m.domain_nodes
        .get_or_create(&mailspool_metrics::DomainLabel {
            domain: "example.org".into(),
        })
        .set(1);
    let exported = m.encode();
    let mut known: BTreeSet<String> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    // Histogram series.
    for h in known.clone() {
        if exported.contains(&format!("# TYPE {h} histogram")) {
            for s in ["_bucket", "_sum", "_count"] {
                known.insert(format!("{h}{s}"));
            }
        }
    }
    assert!(known.len() > 10, "{exported}");
    for file in [
        "prometheus/mailspool.rules.yml",
        "prometheus/mailspool.rules.test.yml",
        "grafana/mailspool-dashboard.json",
    ] {
        let text = std::fs::read_to_string(contrib(file)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file}");
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses {unknown:?}; exported: {known:?}"
        );
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(contrib("grafana/mailspool-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dash["panels"].as_array().unwrap().len() >= 10);
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    let Ok(which) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs promtool (Debian's prometheus package, installed by .ci/run)"
        );
        eprintln!("skipped: promtool not installed");
        return;
    };
    assert!(which.status.success());
    for args in [
        ["check", "rules", "mailspool.rules.yml"],
        ["test", "rules", "mailspool.rules.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(contrib("prometheus"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
