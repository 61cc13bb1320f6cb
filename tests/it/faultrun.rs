//! The randomized fault run, short: about 1,000 orders and 40 s of overlapping faults per run, on SQLite and
//! PostgreSQL, two seeds each. The long run (`scripts/fault-run.sh`, figures in the README) is not here.

use std::process::Command;

const RUNNER: &str = env!("CARGO_BIN_EXE_ordersync-fault-run");
const ORDERSYNC: &str = env!("CARGO_BIN_EXE_ordersync");

fn fault_run(db: &str, seed: u64, extra: &[&str]) -> (i32, String) {
    let output = Command::new(RUNNER)
        .args(["--ordersync", ORDERSYNC, "--db", db, "--seed", &seed.to_string()])
        .args(extra)
        .output()
        .expect("the fault run starts");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// A short run: every invariant holds and the table is printed. Gives how many kills landed inside a write
/// transaction of ordersync's, and the faults the simulator served (name and count).
fn short_run(db: &str, seed: u64) -> (usize, Vec<(String, u64)>) {
    let (code, text) = fault_run(db, seed, &["--orders", "1000", "--seconds", "40", "--settle", "30"]);
    assert_eq!(code, 0, "the fault run on {db} with seed {seed} broke an invariant:\n{text}");
    for line in ["false completions", "lost updates", "bot writes overwritten", "sync latency"] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
    let served: Vec<(String, u64)> = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("the simulator served: "))
        .unwrap_or_else(|| panic!("no line of served faults:\n{text}"))
        .split(", ")
        .filter_map(|item| {
            let (name, count) = item.rsplit_once(' ')?;
            Some((name.to_string(), count.parse().ok()?))
        })
        .collect();
    // kill -9 happened and ordersync came back each time.
    assert!(!text.contains("ordersync started 1 times"), "{text}");
    let landed = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("kills aimed at a write transaction: "))
        .and_then(|rest| rest.rsplit(": ").next()?.trim().parse().ok());
    (landed.unwrap_or_else(|| panic!("no count of aimed kills:\n{text}")), served)
}

/// Both databases, two seeds each, the four runs side by side (they mostly wait on the clock). Each kind of
/// fault must have been served in the four runs together: one run alone may serve none of a kind, since a
/// seed can put a kind's windows where ordersync sends nothing (seed 2's REST 5xx windows fall inside a
/// database lock beyond ordersync's lock wait and right after a kill -9, so a loaded machine sees no request
/// in them).
#[test]
fn short_fault_runs_keep_every_invariant_on_sqlite_and_postgres() {
    let runs: Vec<_> = [("sqlite", 1), ("sqlite", 2), ("postgres", 3), ("postgres", 4)]
        .into_iter()
        .map(|(db, seed)| std::thread::spawn(move || short_run(db, seed)))
        .collect();
    let mut failed: Vec<String> = Vec::new();
    let mut landed = 0;
    let mut served: std::collections::BTreeMap<String, u64> = Default::default();
    for run in runs {
        match run.join() {
            Ok((count, faults)) => {
                landed += count;
                for (name, count) in faults {
                    *served.entry(name).or_default() += count;
                }
            }
            Err(panic) => {
                failed.push(panic.downcast_ref::<String>().cloned().unwrap_or_else(|| "a run panicked".into()))
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    for kind in ["server_error", "not_found", "ws_dropped", "ws_duplicated"] {
        assert!(served.get(kind).is_some_and(|n| *n > 0), "the simulator served no {kind} in four runs: {served:?}");
    }
    assert!(landed >= 1, "no kill -9 landed inside a write transaction in four runs");
}

/// A run whose end state was tampered with fails, with the seed, the broken invariant and the order's
/// whole history: the checker can fail.
#[test]
fn a_wrong_row_fails_the_run_with_its_seed_and_history() {
    let (code, text) = fault_run("sqlite", 11, &["--orders", "60", "--seconds", "4", "--settle", "5", "--tamper"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAILED: seed 11 (sqlite database): false completions"), "{text}");
    assert!(text.contains("history of order"), "{text}");
    assert!(text.contains("exchange at the end"), "{text}");
    assert!(text.contains("replay: scripts/fault-run.sh --seed 11"), "{text}");
}
