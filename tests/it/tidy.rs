//! House rules checked on the tree: every source file says what it owns (`//!` first), and every module is
//! on the map in ARCHITECTURE.md.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_source_file_opens_with_what_it_owns_and_is_on_the_architecture_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(files.len() > 20);
    for file in files {
        let relative = file.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("//!"), "{relative} must start with a //! comment saying what it owns");
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let on_map = architecture.contains(&format!("`{relative}`"))
            || (name == "mod.rs" && architecture.contains(&format!("`{}/`", relative.trim_end_matches("/mod.rs"))))
            || architecture.contains(&format!("`{name}`"));
        assert!(on_map, "ARCHITECTURE.md does not name {relative}");
    }
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

/// The names of every test function in the tree (`#[test]`, `#[tokio::test]`, and the bodies `both!` runs
/// on SQLite and PostgreSQL).
fn test_names() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    sources(&root.join("tests"), &mut files);
    let mut names = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            if let Some(both) = trimmed.strip_prefix("crate::both!(").or_else(|| trimmed.strip_prefix("both!(")) {
                names.push(both.trim_end_matches(");").to_string());
            }
            let attribute =
                |l: &str| l.trim_start().starts_with("#[test]") || l.trim_start().starts_with("#[tokio::test");
            if attribute(trimmed) {
                if let Some(f) = lines[i + 1..].iter().find(|l| l.contains("fn ")) {
                    let after = f.split("fn ").nth(1).unwrap_or_default();
                    names.push(after.split(['(', '<']).next().unwrap_or_default().to_string());
                }
            }
        }
    }
    names
}

/// ARCHITECTURE.md's invariants are promises: each names (in backquotes) a test that holds it, and that test
/// exists.
#[test]
fn every_invariant_in_the_architecture_names_a_test_that_exists() {
    let architecture = read("ARCHITECTURE.md");
    let tests = test_names();
    let mut claims: Vec<String> = architecture
        .split("**Invariant:**")
        .skip(1)
        .map(|rest| {
            // A claim runs to the next invariant or the end of its bullet.
            let end = [rest.find("**Invariant:**"), rest.find("\n- "), rest.find("\n\n")].into_iter().flatten().min();
            rest[..end.unwrap_or(rest.len())].to_string()
        })
        .collect();
    let section = architecture.split("## Invariants").nth(1).unwrap().split("\n## ").next().unwrap();
    claims.extend(section.split("\n- ").skip(1).map(str::to_string));
    assert!(claims.len() >= 25, "{} claims", claims.len());
    for claim in claims {
        let named: Vec<&str> =
            claim.split('`').skip(1).step_by(2).filter(|name| tests.iter().any(|t| t == name)).collect();
        assert!(!named.is_empty(), "an invariant names no test that exists:\n{}", claim.trim());
    }
}

/// The pure parts (the decision, whose account a row is, what a reload changes) read no clock, file,
/// environment or database and await nothing: they are tested exhaustively without any.
#[test]
fn the_decisions_do_no_io() {
    for file in ["src/decide.rs", "src/account.rs", "src/reload.rs"] {
        let text = read(file);
        let code = text.split("#[cfg(test)]").next().unwrap();
        for io in ["async fn", ".await", "Utc::now", "Instant::now", "std::fs", "std::env", "sqlx", "tokio", "reqwest"]
        {
            assert!(!code.contains(io), "{file} does I/O: {io}");
        }
    }
}

/// `config::resolve` is pure but for what the configuration names (an account's `private_key_env`, the
/// SMTP password file), which it reads through the `Reader` it is given: the one `std::env::var` and the one
/// file read in config/mod.rs are `System`'s, and the settings table reads neither.
#[test]
fn resolve_reads_the_environment_and_files_only_through_its_reader() {
    let table = read("src/config/settings.rs");
    assert!(!table.contains("std::env::var") && !table.contains("std::fs::"), "settings.rs reads nothing");
    let text = read("src/config/mod.rs");
    let code = text.split("#[cfg(test)]").next().unwrap();
    let system = code.split("impl Reader for System").nth(1).unwrap().split("\n}\n").next().unwrap();
    for io in ["std::env::var(", "std::fs::"] {
        assert_eq!(code.matches(io).count(), 1, "{io} outside System");
        assert!(system.contains(io), "{io} is System's");
    }
}

/// Coinbase's JSON is known in `exchange/` only: the listener reads the user channel, and the simulator
/// writes it, through `exchange::ws` and `exchange::types`; no `json!` builds a Coinbase message elsewhere
/// (the simulator's control API answers with its own `{"error"}`, `{"order_id"}` and `{"now"}`).
#[test]
fn only_exchange_knows_coinbase_json() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    for file in files {
        let relative = file.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        if relative.starts_with("src/exchange/") || relative.starts_with("src/bin/") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (at, _) in code.match_indices("json!(") {
            let opening = &code[at..(at + 40).min(code.len())];
            let control = ["json!({\"error\"", "json!({\"order_id\"", "json!({\"now\""];
            assert!(
                relative == "src/sandbox/server.rs" && control.iter().any(|c| opening.starts_with(c))
                    || !relative.starts_with("src/sandbox/") && !relative.starts_with("src/listen"),
                "{relative} builds JSON by hand: {opening}"
            );
        }
        if relative == "src/listen.rs" || relative.starts_with("src/sandbox/") {
            assert!(!code.contains(".get(\""), "{relative} reads JSON by key");
        }
    }
}

/// Only `db/` writes the bot's table (the demo's and the fault run's simulated bots aside: they play the
/// bot), and there is no global metrics registry.
#[test]
fn only_db_writes_the_bots_table_and_no_metric_is_global() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    for file in files {
        let relative = file.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let plays_the_bot = relative == "src/demo.rs" || relative.starts_with("src/bin/fault-run/");
        if !relative.starts_with("src/db/") && !plays_the_bot {
            assert!(!code.contains("UPDATE "), "{relative} writes a table");
        }
        for global in
            ["default_registry", "register_int_counter!", "register_counter!", "register_gauge!", "lazy_static!"]
        {
            assert!(!code.contains(global), "{relative}: {global}");
        }
    }
    let listener = read("src/listen.rs");
    assert!(!listener.contains("Store") && !listener.contains("write_batch"), "the listener writes nothing");
}

/// The README's configuration reference is the settings table (`config::settings::SETTINGS`), row for row.
/// `ORDERSYNC_BLESS=1` writes the table into the README instead of failing.
#[test]
fn readme_configuration_reference_is_made_from_the_settings_table() {
    const BEGIN: &str = "<!-- settings table: begin -->\n";
    const END: &str = "<!-- settings table: end -->";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let from = readme.find(BEGIN).expect("the README marks its settings table") + BEGIN.len();
    let to = readme[from..].find(END).expect("the README marks the end of its settings table") + from;
    let table = ordersync::config::settings::reference_table();
    if std::env::var_os("ORDERSYNC_BLESS").is_some() {
        std::fs::write(&path, format!("{}{table}{}", &readme[..from], &readme[to..])).unwrap();
        return;
    }
    let written = &readme[from..to];
    for (line, (want, have)) in table.lines().zip(written.lines()).enumerate() {
        assert_eq!(
            have, want,
            "README settings table, row {line}: run ORDERSYNC_BLESS=1 cargo test --test it readme_configuration"
        );
    }
    assert_eq!(written.lines().count(), table.lines().count(), "rows in the README's settings table");
}
