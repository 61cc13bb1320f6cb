//! `ordersync reconcile`: one pass (`--once`, `--dry-run`, `--json`) or passes every poll interval.

use std::io::Write;

use anyhow::Context;

use crate::app;
use crate::config::Config;
use crate::decide::VerdictWord;
use crate::reconcile::{CheckResult, Mode, PassReport};

use super::{app_error, reconciler, signal_token, Tables, UsageError};

pub(super) async fn reconcile(
    config: &Config,
    once: bool,
    dry_run: bool,
    json: bool,
    no_migrate: bool,
) -> anyhow::Result<i32> {
    let tables = match (dry_run, no_migrate) {
        (true, _) => Tables::ReadOnly,
        (false, true) => Tables::Current,
        (false, false) => Tables::Migrate,
    };
    // A pass that writes is the one ordersync on a SQLite file for as long as it runs; a dry run only reads.
    let _instance = if dry_run { None } else { app::claim_database(config).map_err(app_error)? };
    if !once && dry_run {
        return Err(UsageError("--dry-run needs --once: a dry run is one pass".into()).into());
    }
    let reconciler = reconciler(config, tables).await?;
    let token = signal_token();
    let ownership = reconciler.accounts().ownership().clone();
    let lease =
        crate::replica::LeaseSettings { lease: config.lease, accounts: reconciler.accounts().map().names().to_vec() };
    if !once {
        // A replica like serve (without HTTP): on PostgreSQL it takes its share of the accounts.
        let leases = ownership.is_leased().then(|| {
            let (store, ownership, lease, token) =
                (reconciler.store().clone(), ownership.clone(), lease, token.clone());
            tokio::spawn(crate::replica::run(store, ownership, lease, token))
        });
        // Orders found ended less than `grace` ago are checked again as the grace period ends, as in serve.
        let due = reconciler.clone();
        let due_token = token.clone();
        let due_checks = tokio::spawn(async move { due.run_due(due_token).await });
        reconciler.run(token).await;
        let _ = due_checks.await;
        if let Some(leases) = leases {
            let _ = leases.await;
        }
        return Ok(0);
    }
    if ownership.is_leased() {
        // One pass: the accounts no running replica holds, given back at the end.
        let skipped = crate::replica::claim_free(reconciler.store(), &ownership, &lease)
            .await
            .context("taking the accounts' leases")?;
        for (account, owner) in skipped {
            eprintln!("account {account} is served by replica {owner}: its orders are that replica's to check");
        }
    }
    let mode = if dry_run { Mode::DryRun } else { Mode::Apply };
    let report = reconciler.pass(mode, &token).await.context("reconcile pass failed");
    let report = match report {
        Ok(mut report) => {
            // Orders that ended less than `grace` ago are checked once the bot had its grace period.
            for checked in reconciler.finish_due(&token).await {
                match report.checked.iter_mut().find(|c| c.order_id == checked.order_id) {
                    Some(earlier) => *earlier = checked,
                    None => report.checked.push(checked),
                }
            }
            Ok(report)
        }
        Err(error) => Err(error),
    };
    if ownership.is_leased() {
        crate::replica::release_all(reconciler.store(), &ownership).await;
    }
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).context("encoding the report")?);
    } else {
        print_summary(&report, dry_run);
    }
    if let Some(held) = &report.braked {
        eprintln!(
            "error: the mass-correction brake held every correction: this pass would correct {} of {} pending \
             rows (max_corrections_per_pass {}, max_correction_share {}); nothing was corrected. Check the status \
             words and that the key is the bot's account (ordersync audit), then run `ordersync reconcile --once \
             --allow-mass-correction`",
            held.would_correct, held.pending, held.max_corrections, held.max_share
        );
        return Ok(1);
    }
    // Automation must be able to trust the exit code: a pass that checked nothing, or was cut short, failed.
    if let Some(why) = pass_failure(&report) {
        let written = if dry_run { "nothing was written" } else { "what was written stands" };
        eprintln!("error: {why}; {written}");
        return Ok(1);
    }
    Ok(0)
}

/// Exit 1, saying why on stderr, when a pass checked nothing or was cut short: its figures are not the
/// truth, whatever `--fail-on-mismatch` would say.
pub(super) fn pass_failure(report: &PassReport) -> Option<String> {
    if report.failed {
        let why = report.checked.iter().find_map(|c| c.detail.clone()).unwrap_or_default();
        return Some(format!("no order could be checked: the exchange gave no certain answer for any ({why})"));
    }
    report.interrupted.then(|| "the pass was interrupted before every order was checked".to_string())
}

pub(super) fn print_summary(report: &PassReport, dry_run: bool) {
    let mut out = std::io::stdout().lock();
    for checked in report.checked.iter().filter(|c| c.verdict != VerdictWord::InSync) {
        let _ = writeln!(
            out,
            "{:<38} {:<10} {:<22} {:<17} {}",
            checked.order_id,
            checked.bot_id.as_deref().unwrap_or("-"),
            checked.exchange_status.as_deref().unwrap_or("-"),
            checked.verdict,
            checked.detail.as_deref().unwrap_or(checked.result.as_str())
        );
    }
    let changed = report.count(if dry_run { CheckResult::WouldCorrect } else { CheckResult::Corrected });
    let _ = writeln!(
        out,
        "{} checked, {} mismatches, {} {}, {} unresolved, {} left alone by the grace period, {} waiting on their \
         backoff{}",
        report.checked.len(),
        report.mismatches(),
        changed,
        if dry_run { "would be corrected (dry run: nothing written)" } else { "corrected" },
        report.checked.iter().filter(|c| matches!(c.verdict, VerdictWord::Unresolved | VerdictWord::Flagged)).count(),
        report.too_young,
        report.deferred,
        if report.interrupted { ", interrupted" } else { "" },
    );
}
