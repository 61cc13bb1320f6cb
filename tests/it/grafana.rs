//! The Grafana dashboard: a lint of the rules a stock Grafana and its users need, and every panel's query
//! evaluated by a real Prometheus scraping a running demo.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

fn dashboard() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards/ordersync.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row").collect()
}

fn exprs(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn the_dashboard_follows_the_rules_file_provisioning_needs() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "ordersync-overview", "a stable uid keeps links working");
    assert!(dashboard.get("__inputs").is_none(), "file provisioning does not resolve __inputs");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables
        .iter()
        .any(|v| v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "datasource"));
    assert!(variables.iter().any(|v| v["name"] == "bot" && v["includeAll"] == true));
    let mut ids = HashSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_i64().unwrap()), "panel id {} is used twice", panel["id"]);
    }
    let panels = panels(&dashboard);
    assert!(panels.len() >= 20);
    for panel in &panels {
        let title = panel["title"].as_str().unwrap();
        assert!(panel["description"].as_str().is_some_and(|d| d.len() > 20), "{title}: a description");
        assert!(panel["fieldConfig"]["defaults"]["unit"].as_str().is_some_and(|u| !u.is_empty()), "{title}: a unit");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}: the datasource variable");
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            for window in expr.split('[').skip(1).map(|rest| rest.split(']').next().unwrap()) {
                assert!(
                    ["$__rate_interval", "$__range"].contains(&window),
                    "{title}: use $__rate_interval, not [{window}]"
                );
            }
        }
    }
    let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().unwrap()).collect();
    for needed in [
        "Pending orders",
        "Oldest pending order",
        "Pending age distribution",
        "Stuck orders",
        "Blocked bots",
        "Mismatches and corrections",
        "Sync latency percentiles",
        "Sync latency heatmap",
        "Accuracy SLI against 99.9%",
        "Error budget left",
        "Reconcile passes",
        "Reconcile duration",
        "Exchange requests",
        "Exchange errors and latency",
    ] {
        assert!(titles.contains(&needed), "a panel {needed:?}");
    }
}

/// Prometheus on a free port, scraping `target` every second.
struct Prometheus {
    url: String,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

async fn prometheus(target: &str) -> Prometheus {
    let binary = std::env::var("ORDERSYNC_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ordersync\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = tokio::process::Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{binary} is needed (Debian package prometheus; scripts/test.sh installs it): {e}"));
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if reqwest::get(format!("{url}/-/ready")).await.is_ok_and(|r| r.status().is_success()) {
            return Prometheus { url, _dir: dir, _child: child };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Prometheus did not become ready");
}

async fn query(prometheus: &Prometheus, expr: &str) -> Vec<Value> {
    let response: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/query", prometheus.url))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["status"], "success", "{expr}: {response}");
    response["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_data_from_prometheus_scraping_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let (_demo, metrics_url) = crate::cli::start_demo(dir.path()).await;
    let target = metrics_url.trim_start_matches("http://").trim_end_matches("/metrics").to_string();
    let dashboard = dashboard();

    let exported = ordersync::metrics::Metrics::standalone(Duration::from_secs(300));
    let known: HashSet<&str> = exported.names().iter().map(String::as_str).collect();
    for expr in exprs(&dashboard) {
        for name in
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|t| t.starts_with("ordersync_"))
        {
            let base = ["_bucket", "_count", "_sum"].iter().fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
            assert!(
                known.contains(name) || known.contains(base),
                "{name} in a panel is not a metric ordersync exports"
            );
        }
    }

    let prometheus = prometheus(&target).await;
    // Enough scrapes for rates over the windows below, and for the demo's bots to have traded.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(!query(&prometheus, "up{job=\"ordersync\"} == 1").await.is_empty(), "Prometheus scrapes the demo");
    for expr in exprs(&dashboard) {
        let concrete = expr.replace("$__rate_interval", "10s").replace("$__range", "1m").replace("$bot", ".*");
        assert!(!query(&prometheus, &concrete).await.is_empty(), "no data for {expr}");
    }
}
