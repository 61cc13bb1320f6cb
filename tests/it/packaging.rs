//! The packaging files, checked where no container can be built (no registry image can be pulled on the
//! development machines): the systemd unit by `systemd-analyze`, the Containerfile and the compose stack by
//! reading them as their tools would, Prometheus's config by `promtool`, and `docker compose config` where
//! the compose plugin is installed.

use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

use crate::harness::{run, tool};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// The port of ordersync's default listen address (the README's `ORDERSYNC_LISTEN` default).
fn default_port() -> u16 {
    let config = ordersync::config::resolve(
        &ordersync::config::Overrides::default(),
        &ordersync::config::FileConfig::default(),
        "defaults",
        &ordersync::config::System,
    )
    .unwrap();
    config.listen.port()
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_and_is_hardened() {
    let unit = read("packaging/ordersync.service");
    for setting in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "EnvironmentFile=/etc/ordersync/ordersync.env",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|line| line == setting), "the unit lacks {setting}");
    }
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let (binary, command) = exec.split_once(' ').expect("ExecStart names a command");
    assert_eq!(binary, "/usr/local/bin/ordersync");
    // The command it starts exists (a renamed subcommand would fail only at `systemctl start`).
    let ordersync = env!("CARGO_BIN_EXE_ordersync");
    run(ordersync, &[command, "--help"]);

    // verify needs the executable to exist: the built binary stands in for the installed one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ordersync.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ordersync", ordersync)).unwrap();
    let analyze = tool("systemd-analyze", "ORDERSYNC_SYSTEMD_ANALYZE");
    let path = path.to_str().unwrap();
    let verified = run(&analyze, &["verify", "--man=no", path]);
    assert!(verified.trim().is_empty(), "systemd-analyze verify warned:\n{verified}");
    // systemd's own exposure score, 0 (locked down) to 10: "OK" is below 2.0 (--threshold is in tenths).
    let security = run(&analyze, &["security", "--offline=yes", "--threshold=20", path]);
    assert!(security.contains("Overall exposure level for ordersync.service"), "{security}");
}

/// The Containerfile's instructions, continuation lines joined: `(instruction, arguments)`.
fn containerfile() -> Vec<(String, String)> {
    let text = read("packaging/Containerfile");
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        match line.trim_end().strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    joined.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    joined
        .iter()
        .map(|line| {
            let (instruction, rest) = line.trim().split_once(char::is_whitespace).unwrap_or((line.trim(), ""));
            (instruction.to_uppercase(), rest.trim().to_string())
        })
        .collect()
}

#[test]
fn the_container_image_is_built_in_stages_and_runs_unprivileged_with_a_readiness_check() {
    let instructions = containerfile();
    let stages: Vec<usize> = (0..instructions.len()).filter(|&i| instructions[i].0 == "FROM").collect();
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    let runtime = &instructions[*stages.last().unwrap()..];
    assert!(runtime[0].1.contains("-slim") || runtime[0].1.contains("distroless"), "a minimal base: {}", runtime[0].1);
    // Only the binary crosses from the build stage.
    let copied: Vec<&String> = runtime.iter().filter(|(i, _)| i == "COPY").map(|(_, args)| args).collect();
    assert!(copied.iter().all(|args| args.starts_with("--from=build")), "{copied:?}");
    let user = runtime.iter().filter(|(i, _)| i == "USER").map(|(_, a)| a.as_str()).next_back().expect("a USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "runs as {user}");
    let port = default_port().to_string();
    let expose = runtime.iter().find(|(i, _)| i == "EXPOSE").expect("EXPOSE");
    assert_eq!(expose.1, port);
    let health = runtime.iter().find(|(i, _)| i == "HEALTHCHECK").expect("HEALTHCHECK");
    assert!(health.1.contains(&format!("127.0.0.1:{port}/readyz")), "{}", health.1);
    let env = runtime.iter().find(|(i, _)| i == "ENV").expect("ENV");
    assert!(env.1.contains(&format!("ORDERSYNC_LISTEN=0.0.0.0:{port}")), "{}", env.1);
    // What the build stage copies exists, and it installs the service's binary.
    for (_, args) in instructions[..*stages.last().unwrap()].iter().filter(|(i, _)| i == "COPY") {
        let mut parts: Vec<&str> = args.split_whitespace().collect();
        parts.pop(); // the destination
        for source in parts {
            assert!(repo().join(source).exists(), "COPY {source}: no such file in the repository");
        }
    }
    let install = instructions.iter().find(|(i, a)| i == "RUN" && a.contains("cargo install")).expect("cargo install");
    assert!(install.1.contains("--locked") && install.1.contains("--bin ordersync"), "{}", install.1);
}

/// `(service name, its YAML)` of the compose file.
fn services(compose: &Value) -> Vec<(String, Value)> {
    compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(name, service)| (name.as_str().unwrap().to_string(), service.clone()))
        .collect()
}

#[test]
fn the_compose_stack_starts_every_piece_with_the_repositorys_files() {
    let dir = repo().join("packaging/compose");
    let compose = yaml("packaging/compose/compose.yaml");
    let services = services(&compose);
    let names: Vec<&str> = services.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["ordersync", "postgres", "prometheus", "alertmanager", "grafana"]);
    let service = |name: &str| &services.iter().find(|(n, _)| n == name).unwrap().1;

    // Every file a service mounts from the repository exists where compose will look for it.
    let mut mounted: Vec<(String, PathBuf)> = Vec::new();
    for (name, service) in &services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let volume = volume.as_str().unwrap();
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') {
                let path = dir.join(source);
                assert!(path.exists(), "{name} mounts {source}, which does not exist");
                mounted.push((name.clone(), path.canonicalize().unwrap()));
            }
        }
    }
    let mounts = |name: &str, path: &str| {
        let path = repo().join(path).canonicalize().unwrap();
        mounted.iter().any(|(n, p)| n == name && (path.starts_with(p)))
    };
    assert!(mounts("prometheus", "alerts/ordersync.rules.yml"), "Prometheus gets the rules");
    assert!(mounts("alertmanager", "alerts/alertmanager.example.yml"));
    assert!(mounts("grafana", "grafana/dashboards/ordersync.json"), "Grafana gets the dashboard");
    assert!(mounts("grafana", "grafana/provisioning/dashboards/ordersync.yml"));

    // ordersync: built from the Containerfile, ready when /readyz says so, on its default port.
    let ordersync = service("ordersync");
    let context = dir.join(ordersync["build"]["context"].as_str().unwrap());
    assert!(context.join(ordersync["build"]["dockerfile"].as_str().unwrap()).exists());
    assert!(context.join("Cargo.toml").exists(), "the build context is the repository");
    let port = default_port();
    let health: Vec<&str> =
        ordersync["healthcheck"]["test"].as_sequence().unwrap().iter().flat_map(Value::as_str).collect();
    assert!(health.iter().any(|a| *a == format!("http://127.0.0.1:{port}/readyz")), "{health:?}");
    assert_eq!(ordersync["environment"]["ORDERSYNC_LISTEN"].as_str(), Some(format!("0.0.0.0:{port}").as_str()));
    let url = ordersync["environment"]["ORDERSYNC_DATABASE_URL"].as_str().unwrap();
    let postgres = service("postgres");
    let env = |key: &str| postgres["environment"][key].as_str().unwrap().to_string();
    assert_eq!(
        url,
        format!(
            "postgres://{}:{}@postgres:5432/{}",
            env("POSTGRES_USER"),
            env("POSTGRES_PASSWORD"),
            env("POSTGRES_DB")
        )
    );
    assert_eq!(ordersync["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"));

    // Prometheus: its config passes promtool (the rules path resolves to alerts/ here, as in the container),
    // scrapes ordersync on its port and sends to the stack's Alertmanager.
    let promtool = tool("promtool", "ORDERSYNC_PROMTOOL");
    let checked = run(&promtool, &["check", "config", "packaging/compose/prometheus.yml"]);
    assert!(checked.contains("SUCCESS: 1 rule files found"), "{checked}");
    let prometheus = yaml("packaging/compose/prometheus.yml");
    let rules = prometheus["rule_files"][0].as_str().unwrap();
    let in_container = Path::new("/etc/prometheus").join(rules);
    let normalized: PathBuf = in_container.components().fold(PathBuf::new(), |mut path, part| {
        match part {
            std::path::Component::ParentDir => {
                path.pop();
            }
            other => path.push(other),
        }
        path
    });
    let alerts_mount = service("prometheus")["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(Value::as_str)
        .find(|v| v.starts_with("../../alerts:"))
        .unwrap();
    let target_dir = alerts_mount.split(':').nth(1).unwrap();
    assert_eq!(normalized, Path::new(target_dir).join("ordersync.rules.yml"), "the rules' path inside the container");
    assert_eq!(
        prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str(),
        Some(format!("ordersync:{port}").as_str())
    );
    assert_eq!(
        prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0].as_str(),
        Some("alertmanager:9093")
    );

    // Grafana's datasource is the stack's Prometheus, with the uid the dashboard's provisioning expects.
    let datasource = yaml("packaging/compose/grafana-datasource.yml");
    let general = yaml("grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasource["datasources"][0]["url"].as_str(), Some("http://prometheus:9090"));
    assert_eq!(datasource["datasources"][0]["uid"], general["datasources"][0]["uid"]);

    // The trial's bot table is the incident's, as the tests and the demo create it.
    let table: String =
        read("packaging/compose/bot-table.sql").lines().filter(|l| !l.starts_with("--")).collect::<Vec<_>>().join("\n");
    assert_eq!(table.trim(), ordersync::demo::PG_BOT_SCHEMA);

    // Every setting the example environment file names is one of ordersync's (the README's table).
    let readme = read("README.md");
    for line in
        read("packaging/compose/ordersync.env.example").lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let key = line.split('=').next().unwrap();
        assert!(
            readme.contains(&format!("| `{key}` |")) || readme.contains(&format!("| `{key}` /")),
            "{key} is no setting"
        );
    }

    // The compose plugin's own check, where it is installed.
    let plugin = std::process::Command::new("docker").args(["compose", "version"]).output();
    if plugin.is_ok_and(|output| output.status.success()) {
        run("docker", &["compose", "-f", "packaging/compose/compose.yaml", "config", "--quiet"]);
    } else {
        eprintln!("docker compose is not installed here: compose.yaml checked by this test alone");
    }
}
