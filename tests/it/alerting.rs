//! The shipped alerting files, checked by the real tools: promtool (rules and their unit tests) and amtool
//! (the example Alertmanager config, and where every alert is routed).

use std::path::Path;

use crate::harness::{run, tool};

/// `(alert name, severity)` of every alert in the rules file.
fn alerts() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts/ordersync.rules.yml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut alerts = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            current = Some(name.to_string());
        } else if let Some(severity) = line.strip_prefix("severity: ") {
            if let Some(name) = current.take() {
                alerts.push((name, severity.to_string()));
            }
        }
    }
    alerts
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = tool("promtool", "ORDERSYNC_PROMTOOL");
    let checked = run(&promtool, &["check", "rules", "alerts/ordersync.rules.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run(&promtool, &["test", "rules", "alerts/tests/ordersync.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_has_a_severity_a_runbook_section_and_a_unit_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("alerts/ordersync.rules.yml")).unwrap();
    let runbooks = std::fs::read_to_string(root.join("docs/runbooks.md")).unwrap();
    let tests = std::fs::read_to_string(root.join("alerts/tests/ordersync.test.yml")).unwrap();
    let alerts = alerts();
    assert!(alerts.len() >= 14, "{alerts:?}");
    for (name, severity) in &alerts {
        assert!(["critical", "warning"].contains(&severity.as_str()), "{name}: {severity}");
        assert!(tests.contains(&format!("alertname: {name}")), "{name} has no promtool test");
    }
    for anchor in rules.lines().filter_map(|l| l.trim().strip_prefix("runbook_url: docs/runbooks.md#")) {
        let heading = runbooks.lines().any(|l| l.strip_prefix("## ").is_some_and(|h| h.to_lowercase() == anchor));
        assert!(heading, "docs/runbooks.md has no section for #{anchor}");
    }
}

#[test]
fn the_example_alertmanager_config_is_valid_and_routes_pages_and_email() {
    let amtool = tool("amtool", "ORDERSYNC_AMTOOL");
    run(&amtool, &["check-config", "alerts/alertmanager.example.yml"]);
    let alerts = alerts();
    assert!(!alerts.is_empty());
    for (name, severity) in alerts {
        let receiver = if severity == "critical" { "oncall-pager" } else { "trading-team-email" };
        run(
            &amtool,
            &[
                "config",
                "routes",
                "test",
                "--config.file=alerts/alertmanager.example.yml",
                &format!("--verify.receivers={receiver}"),
                &format!("alertname={name}"),
                &format!("severity={severity}"),
                "bot=alpha",
            ],
        );
    }
}
