//! `ordersync audit`: every pending order and its verdict, and the conflicts; writes nothing.

use std::io::{IsTerminal, Write};

use anyhow::Context;

use crate::config::Config;
use crate::decide::VerdictWord;
use crate::reconcile::{Checked, Mode};

use super::reconcile::pass_failure;
use super::{reconciler, signal_token, Tables, EXIT_MISMATCH};

pub(super) async fn audit(config: &Config, json: bool, fail_on_mismatch: bool) -> anyhow::Result<i32> {
    let reconciler = reconciler(config, Tables::ReadOnly).await?;
    let token = signal_token();
    // A progress bar on a terminal (drawn on stderr, so --json output stays clean); nothing otherwise.
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if std::io::stderr().is_terminal() {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} pending orders checked ({eta} left)")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let report = reconciler.pass_with_progress(Mode::DryRun, &token, &progress).await.context("audit failed");
    bar.finish_and_clear();
    let report = report?;
    // Conflicts found now (read-only: nothing recorded) and those ordersync recorded before.
    let mut conflicts: Vec<crate::db::ConflictRow> =
        reconciler.store().conflicts().await.context("reading terminal conflicts")?;
    let now = chrono::Utc::now();
    for found in report.conflicts() {
        if !conflicts.iter().any(|c| c.order_id == found.order_id) {
            let kind = match found.verdict {
                VerdictWord::ProductConflict => crate::db::ConflictKind::Product,
                _ => crate::db::ConflictKind::Position,
            };
            conflicts.push(crate::db::ConflictRow {
                kind,
                exchange_product_id: None,
                order_id: found.order_id.clone(),
                bot_id: found.bot_id.clone(),
                product_id: found.product_id.clone(),
                row_status: found.db_status.clone(),
                exchange_status: found.exchange_status.clone().unwrap_or_default(),
                filled_size: None,
                found_at: now,
            });
        }
    }
    if json {
        let audit = serde_json::json!({
            "orders": report.checked,
            "terminal_conflicts": conflicts,
            "unmatched_rows": report.unmatched,
        });
        println!("{}", serde_json::to_string_pretty(&audit).context("encoding the audit")?);
    } else {
        let mut out = std::io::stdout().lock();
        let _ =
            writeln!(out, "{:<38} {:<10} {:<14} {:>9} {:<22} VERDICT", "ORDER_ID", "BOT", "PRODUCT", "AGE", "EXCHANGE");
        for c in &report.checked {
            let _ = writeln!(
                out,
                "{:<38} {:<10} {:<14} {:>9} {:<22} {}",
                c.order_id,
                c.bot_id.as_deref().unwrap_or("-"),
                c.product_id.as_deref().unwrap_or("-"),
                c.age_seconds.map_or_else(|| "unknown".to_string(), human_age),
                c.exchange_status.as_deref().unwrap_or("-"),
                c.verdict
            );
        }
        let unreadable: Vec<&Checked> = report.checked.iter().filter(|c| c.created_raw.is_some()).collect();
        if !unreadable.is_empty() {
            let _ = writeln!(
                out,
                "\nROWS WHOSE CREATION TIME CANNOT BE READ (checked like any other; their age is unknown, so they \
                 count as stuck):"
            );
            for c in unreadable {
                let _ = writeln!(out, "{:<38} created_at = {:?}", c.order_id, c.created_raw.as_deref().unwrap_or(""));
            }
        }
        let _ = writeln!(
            out,
            "{} pending orders checked, {} mismatches, {} younger than the grace period not checked, {} unresolved \
             ones waiting on their backoff not asked again yet",
            report.checked.len(),
            report.mismatches(),
            report.too_young,
            report.deferred
        );
        if !conflicts.is_empty() {
            let _ = writeln!(
                out,
                "\nTERMINAL CONFLICTS: the bot's row says one outcome, Coinbase another (ordersync never writes these; \
                 see docs/runbooks.md#ordersyncterminalconflict)\n{:<38} {:<10} {:<14} {:<12} EXCHANGE",
                "ORDER_ID", "BOT", "PRODUCT", "ROW"
            );
            for c in &conflicts {
                let _ = writeln!(
                    out,
                    "{:<38} {:<10} {:<14} {:<12} {}",
                    c.order_id,
                    c.bot_id.as_deref().unwrap_or("-"),
                    c.product_id.as_deref().unwrap_or("-"),
                    c.row_status,
                    c.exchange_status
                );
            }
        }
        let _ = writeln!(out, "terminal conflicts: {}", conflicts.len());
        if !report.unmatched.is_empty() {
            let _ = writeln!(
                out,
                "\nROWS OF NO CONFIGURED ACCOUNT (never asked about, never written: name the account in the row's \
                 account column, or add the bot to an account's bots in [[accounts]])\n{:<38} {:<10} ACCOUNT",
                "ORDER_ID", "BOT"
            );
            for u in &report.unmatched {
                let _ = writeln!(
                    out,
                    "{:<38} {:<10} {}",
                    u.order_id,
                    u.bot_id.as_deref().unwrap_or("-"),
                    u.account.as_deref().unwrap_or("-")
                );
            }
            let _ = writeln!(out, "{} rows of no configured account", report.unmatched.len());
        }
    }
    if let Some(why) = pass_failure(&report) {
        eprintln!("error: {why}");
        return Ok(1);
    }
    let found = report.mismatches() > 0 || !conflicts.is_empty();
    Ok(if fail_on_mismatch && found { EXIT_MISMATCH } else { 0 })
}

pub(super) fn human_age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d", s / 86_400),
    }
}
