//! The SLA report (`ordersync report`): order-status accuracy per order against the 99.9% target, sync
//! latency against the goals (average under 30 s, every completion within 2 minutes), and the orders that
//! needed correction, overall, per bot and per day. `build` is pure; `text`, `json` and `html` render it.
//!
//! Definitions, so the figures can be checked by hand (one row of `ordersync_settlements` per ended order):
//! - an order *ends* when the exchange says FILLED, CANCELLED, EXPIRED or FAILED; each ended order
//!   ordersync has seen is *settled* exactly once, by the bot (its row was already right, or the bot wrote
//!   it within the grace period) or by ordersync (a correction);
//! - bot accuracy = settled by the bot / settled; effective accuracy = settled on time / settled, where
//!   late means ordersync's correction came more than 2 minutes after the order ended. No settled order:
//!   no figure;
//! - latency is from the order's end on the exchange to ordersync's commit, for corrections;
//! - a terminal conflict (the bot's row ended the order with another position) counts against both: not
//!   settled by the bot, and never right;
//! - backlog: orders that ended before ordersync first ran on the database (its first migration) and that
//!   ordersync corrected: counted among the corrections, outside both accuracies and the latency figures;
//! - percentiles are nearest-rank: the p-th is the ceil(p·n)-th smallest latency;
//! - a day or a window holds the orders settled in it.
//!
//! Deliberately not here: SQL (the caller reads `Store::settlements_since`).

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::SettlementRow;
use crate::decide::SettledBy;
pub use crate::decide::LATENCY_GOAL_MAX_SECONDS;

pub const ACCURACY_TARGET: f64 = 0.999;
pub const LATENCY_GOAL_AVERAGE_SECONDS: f64 = 30.0;

/// The per-order SLI of a set of settled orders.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Accuracy {
    /// Ended orders settled (backlog aside).
    pub settled: i64,
    pub by_bot: i64,
    pub by_ordersync: i64,
    /// Terminal conflicts: the bot's row ended the order with another position than Coinbase did.
    pub by_conflict: i64,
    /// Not right within 2 minutes of ending on the exchange: late corrections, and conflicts.
    pub late: i64,
    /// Corrected by ordersync, but ended before ordersync first ran on this database: outside both
    /// accuracies and the latency figures (that wait was not ordersync's).
    pub backlog: i64,
    /// by_bot / settled; `None` without any.
    pub bot_accuracy: Option<f64>,
    /// (settled - late) / settled; `None` without any.
    pub effective_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: usize,
    pub mean_seconds: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    pub max_seconds: Option<f64>,
    pub within_30s: Option<f64>,
    pub within_2m: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub accuracy: Accuracy,
    /// Corrections (settled by ordersync) by the exchange's status.
    pub corrections_by_status: BTreeMap<String, i64>,
    /// Of corrections.
    pub latency: Latency,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub accuracy_target: f64,
    pub bot_accuracy_met: Option<bool>,
    pub effective_accuracy_met: Option<bool>,
    pub latency_goals_met: Option<bool>,
    pub overall: Figures,
    pub per_bot: BTreeMap<String, Figures>,
    pub per_day: BTreeMap<String, Figures>,
    /// Corrections per latency band, for the distribution chart: (band, count).
    pub latency_bands: Vec<(String, usize)>,
}

fn nearest_rank(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

fn latency_of(mut seconds: Vec<f64>) -> Latency {
    seconds.sort_by(|a, b| a.total_cmp(b));
    let count = seconds.len();
    let share = |limit: f64| (count > 0).then(|| seconds.iter().filter(|s| **s <= limit).count() as f64 / count as f64);
    Latency {
        count,
        mean_seconds: (count > 0).then(|| seconds.iter().sum::<f64>() / count as f64),
        p50_seconds: nearest_rank(&seconds, 0.50),
        p95_seconds: nearest_rank(&seconds, 0.95),
        p99_seconds: nearest_rank(&seconds, 0.99),
        max_seconds: seconds.last().copied(),
        within_30s: share(30.0),
        within_2m: share(LATENCY_GOAL_MAX_SECONDS),
    }
}

#[derive(Default)]
struct Tally {
    accuracy: Accuracy,
    by_status: BTreeMap<String, i64>,
    latencies: Vec<f64>,
}

impl Tally {
    fn settled(&mut self, settlement: &SettlementRow) {
        if settlement.settled_by == SettledBy::Ordersync {
            *self.by_status.entry(settlement.exchange_status.clone()).or_default() += 1;
        }
        if settlement.backlog {
            self.accuracy.backlog += 1;
            return;
        }
        self.accuracy.settled += 1;
        match settlement.settled_by {
            SettledBy::Bot => self.accuracy.by_bot += 1,
            SettledBy::Conflict => self.accuracy.by_conflict += 1,
            SettledBy::Ordersync => {
                self.accuracy.by_ordersync += 1;
                if let Some(latency) = settlement.latency_seconds {
                    self.latencies.push(latency);
                }
            }
        }
        if settlement.late {
            self.accuracy.late += 1;
        }
    }

    fn figures(self) -> Figures {
        let mut accuracy = self.accuracy;
        let settled = accuracy.settled as f64;
        accuracy.bot_accuracy = (accuracy.settled > 0).then(|| accuracy.by_bot as f64 / settled);
        accuracy.effective_accuracy = (accuracy.settled > 0).then(|| (settled - accuracy.late as f64) / settled);
        Figures { accuracy, corrections_by_status: self.by_status, latency: latency_of(self.latencies) }
    }
}

/// The report over the orders in `settlements` settled in `since..=until`.
pub fn build(settlements: &[SettlementRow], since: DateTime<Utc>, until: DateTime<Utc>) -> Report {
    let mut overall = Tally::default();
    let mut per_bot: BTreeMap<String, Tally> = BTreeMap::new();
    let mut per_day: BTreeMap<String, Tally> = BTreeMap::new();
    let mut bands = [
        ("< 1 s", 1.0, 0usize),
        ("1–5 s", 5.0, 0),
        ("5–30 s", 30.0, 0),
        ("30 s–2 min", 120.0, 0),
        ("2–10 min", 600.0, 0),
        ("> 10 min", f64::INFINITY, 0),
    ];
    for settlement in settlements.iter().filter(|s| s.settled_at >= since && s.settled_at <= until) {
        overall.settled(settlement);
        per_bot.entry(settlement.bot_id.clone().unwrap_or_else(|| "none".into())).or_default().settled(settlement);
        per_day.entry(settlement.settled_at.format("%Y-%m-%d").to_string()).or_default().settled(settlement);
        if let (SettledBy::Ordersync, Some(latency), false) =
            (settlement.settled_by, settlement.latency_seconds, settlement.backlog)
        {
            if let Some(band) = bands.iter_mut().find(|(_, limit, _)| latency < *limit) {
                band.2 += 1;
            }
        }
    }
    let overall = overall.figures();
    let met = |value: Option<f64>| value.map(|a| a >= ACCURACY_TARGET);
    let latency_goals_met = overall
        .latency
        .mean_seconds
        .zip(overall.latency.max_seconds)
        .map(|(mean, max)| mean < LATENCY_GOAL_AVERAGE_SECONDS && max <= LATENCY_GOAL_MAX_SECONDS);
    Report {
        since,
        until,
        accuracy_target: ACCURACY_TARGET,
        bot_accuracy_met: met(overall.accuracy.bot_accuracy),
        effective_accuracy_met: met(overall.accuracy.effective_accuracy),
        latency_goals_met,
        overall,
        per_bot: per_bot.into_iter().map(|(k, v)| (k, v.figures())).collect(),
        per_day: per_day.into_iter().map(|(k, v)| (k, v.figures())).collect(),
        latency_bands: bands.iter().map(|(name, _, n)| (name.to_string(), *n)).collect(),
    }
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_string(), |v| format!("{:.3}%", v * 100.0))
}

/// A latency in the unit that reads best: `12 ms`, `4.2 s`, `3.5 min`, `3.0 h`.
fn seconds(value: Option<f64>) -> String {
    match value {
        None => "—".to_string(),
        Some(v) if v < 1.0 => format!("{:.0} ms", v * 1000.0),
        Some(v) if v < 120.0 => format!("{v:.1} s"),
        Some(v) if v < 7200.0 => format!("{:.1} min", v / 60.0),
        Some(v) => format!("{:.1} h", v / 3600.0),
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "MET",
        Some(false) => "MISSED",
        None => "no data",
    }
}

/// A plain-text report for a terminal or an e-mail.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let o = &report.overall;
    let _ = writeln!(
        out,
        "ordersync SLA report, {} to {}",
        report.since.format("%Y-%m-%d %H:%M UTC"),
        report.until.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(out);
    let a = &o.accuracy;
    let _ = writeln!(
        out,
        "Bot accuracy:       {} against {}: {} ({} of {} ended orders settled by the bot itself; {} corrected by ordersync, {} terminal conflicts)",
        percent(a.bot_accuracy),
        percent(Some(report.accuracy_target)),
        verdict(report.bot_accuracy_met),
        a.by_bot,
        a.settled,
        a.by_ordersync,
        a.by_conflict
    );
    let _ = writeln!(
        out,
        "Effective accuracy: {} against {}: {} ({} of {} right within 2 min of ending on the exchange; {} late or in conflict)",
        percent(a.effective_accuracy),
        percent(Some(report.accuracy_target)),
        verdict(report.effective_accuracy_met),
        a.settled - a.late,
        a.settled,
        a.late
    );
    let _ = writeln!(
        out,
        "Latency of corrections: p50 {}, p95 {}, p99 {}, mean {}, max {}; within 30 s {}, within 2 min {}: goals (mean < 30 s, all within 2 min) {}",
        seconds(o.latency.p50_seconds),
        seconds(o.latency.p95_seconds),
        seconds(o.latency.p99_seconds),
        seconds(o.latency.mean_seconds),
        seconds(o.latency.max_seconds),
        percent(o.latency.within_30s),
        percent(o.latency.within_2m),
        verdict(report.latency_goals_met)
    );
    let statuses: Vec<String> = o.corrections_by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let _ = writeln!(out, "Corrected: {} orders ({})", a.by_ordersync + a.backlog, statuses.join(", "));
    if a.backlog > 0 {
        let _ = writeln!(
            out,
            "Backlog:   {} of them ended before ordersync first ran on this database: corrected, but outside both \
             accuracies and the latency figures",
            a.backlog
        );
    }
    for (title, rows) in [("Per bot", &report.per_bot), ("Per day", &report.per_day)] {
        let _ = writeln!(
            out,
            "\n{title}:\n{:<20} {:>8} {:>12} {:>10} {:>10} {:>6} {:>10} {:>10}",
            "", "settled", "bot acc.", "effective", "corrected", "late", "p50", "p99"
        );
        for (key, f) in rows {
            let _ = writeln!(
                out,
                "{:<20} {:>8} {:>12} {:>10} {:>10} {:>6} {:>10} {:>10}",
                key,
                f.accuracy.settled,
                percent(f.accuracy.bot_accuracy),
                percent(f.accuracy.effective_accuracy),
                f.accuracy.by_ordersync,
                f.accuracy.late,
                seconds(f.latency.p50_seconds),
                seconds(f.latency.p99_seconds)
            );
        }
    }
    out
}

/// The report as JSON.
pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn bar_chart(title: &str, bars: &[(String, f64, String)], max: f64) -> String {
    let (width, height, left, bottom) = (640.0, 220.0, 40.0, 40.0);
    let slot = (width - left) / bars.len().max(1) as f64;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" role=\"img\">",
        escape(title)
    );
    for (index, (label, value, shown)) in bars.iter().enumerate() {
        let h = if max > 0.0 { (value / max) * (height - bottom - 20.0) } else { 0.0 };
        let x = left + index as f64 * slot + slot * 0.15;
        let y = height - bottom - h;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#3b7dd8\"><title>{}: {}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            slot * 0.7,
            escape(label),
            escape(shown),
            x + slot * 0.35,
            height - bottom + 15.0,
            escape(label),
            x + slot * 0.35,
            (y - 4.0).max(10.0),
            escape(shown)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// One self-contained HTML file (inline CSS and SVG charts; nothing fetched) for a manager's browser.
pub fn html(report: &Report) -> String {
    let o = &report.overall;
    let a = &o.accuracy;
    let latency_bars: Vec<(String, f64, String)> =
        report.latency_bands.iter().map(|(band, n)| (band.clone(), *n as f64, n.to_string())).collect();
    let latency_max = latency_bars.iter().map(|b| b.1).fold(0.0, f64::max);
    let daily = |pick: fn(&Accuracy) -> Option<f64>| -> Vec<(String, f64, String)> {
        report
            .per_day
            .iter()
            .filter_map(|(day, f)| pick(&f.accuracy).map(|a| (day[5..].to_string(), a, format!("{:.2}%", a * 100.0))))
            .collect()
    };
    let mut rows = String::new();
    for (title, table) in [("Per bot", &report.per_bot), ("Per day", &report.per_day)] {
        let _ = write!(rows, "<h2>{title}</h2><table><tr><th></th><th>Settled</th><th>Bot accuracy</th><th>Effective accuracy</th><th>Corrected</th><th>Late</th><th>p50</th><th>p95</th><th>p99</th><th>Within 30 s</th></tr>");
        for (key, f) in table {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(key),
                f.accuracy.settled,
                percent(f.accuracy.bot_accuracy),
                percent(f.accuracy.effective_accuracy),
                f.accuracy.by_ordersync,
                f.accuracy.late,
                seconds(f.latency.p50_seconds),
                seconds(f.latency.p95_seconds),
                seconds(f.latency.p99_seconds),
                percent(f.latency.within_30s)
            );
        }
        rows.push_str("</table>");
    }
    let class = |met: Option<bool>| if met == Some(false) { "missed" } else { "met" };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ordersync SLA report</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;width:100%;margin-bottom:1.5em}}td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}.met{{color:#1a7f37}}.missed{{color:#cf222e}}\
         .cards{{display:flex;gap:1em}}.card{{flex:1;border:1px solid #ddd;border-radius:6px;padding:1em}}.big{{font-size:2em}}\
         figure{{margin:1em 0}}</style></head><body>\
         <h1>ordersync SLA report</h1><p>{} to {}</p><p>Each order that ended on the exchange counts once: settled by the bot \
         (its row was right) or by ordersync (a correction). Effective accuracy counts the orders whose row was right within \
         2 minutes of the end.</p><div class=\"cards\">\
         <div class=\"card\"><div>Bot accuracy (target {})</div><div class=\"big {}\">{}</div><div>{} of {} ended orders settled by the bot itself</div></div>\
         <div class=\"card\"><div>Effective accuracy (target {})</div><div class=\"big {}\">{}</div><div>{} of {} right within 2 min; {} late or in conflict</div></div>\
         <div class=\"card\"><div>Sync latency of corrections p50 / p99</div><div class=\"big {}\">{} / {}</div><div>mean {}; {} within 30 s, {} within 2 min</div></div>\
         <div class=\"card\"><div>Orders corrected</div><div class=\"big\">{}</div><div>{} of them backlog: ended before ordersync first ran, outside the accuracies and latency</div></div></div>\
         {}{}{}{}</body></html>\n",
        report.since.format("%Y-%m-%d %H:%M UTC"),
        report.until.format("%Y-%m-%d %H:%M UTC"),
        percent(Some(report.accuracy_target)),
        class(report.bot_accuracy_met),
        percent(a.bot_accuracy),
        a.by_bot,
        a.settled,
        percent(Some(report.accuracy_target)),
        class(report.effective_accuracy_met),
        percent(a.effective_accuracy),
        a.settled - a.late,
        a.settled,
        a.late,
        class(report.latency_goals_met),
        seconds(o.latency.p50_seconds),
        seconds(o.latency.p99_seconds),
        seconds(o.latency.mean_seconds),
        percent(o.latency.within_30s),
        percent(o.latency.within_2m),
        a.by_ordersync + a.backlog,
        a.backlog,
        bar_chart("Sync latency of corrections (orders per band)", &latency_bars, latency_max),
        bar_chart("Daily bot accuracy", &daily(|a| a.bot_accuracy), 1.0),
        bar_chart("Daily effective accuracy", &daily(|a| a.effective_accuracy), 1.0),
        rows
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&sorted, 0.50), Some(50.0));
        assert_eq!(nearest_rank(&sorted, 0.95), Some(95.0));
        assert_eq!(nearest_rank(&sorted, 0.99), Some(99.0));
        assert_eq!(nearest_rank(&[7.0], 0.99), Some(7.0));
        assert_eq!(nearest_rank(&[], 0.5), None);
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0], 0.5), Some(2.0));
    }

    #[test]
    fn latencies_read_in_a_sensible_unit() {
        assert_eq!(seconds(Some(0.0123)), "12 ms");
        assert_eq!(seconds(Some(4.25)), "4.2 s");
        assert_eq!(seconds(Some(210.0)), "3.5 min");
        assert_eq!(seconds(Some(10_796.0)), "3.0 h");
        assert_eq!(seconds(None), "—");
    }

    #[test]
    fn no_settled_order_is_no_figure_not_a_perfect_one() {
        let now = Utc::now();
        let report = build(&[], now, now);
        assert_eq!((report.overall.accuracy.bot_accuracy, report.bot_accuracy_met), (None, None));
        assert_eq!((report.overall.accuracy.effective_accuracy, report.effective_accuracy_met), (None, None));
        assert!(text(&report).contains("no data"));
    }

    fn settlement(id: &str, bot: &str, by: SettledBy, latency: Option<f64>, at: DateTime<Utc>) -> SettlementRow {
        SettlementRow {
            order_id: id.into(),
            bot_id: Some(bot.into()),
            settled_by: by,
            exchange_status: "FILLED".into(),
            ended_at: latency.map(|l| at - chrono::Duration::milliseconds((l * 1000.0) as i64)),
            end_source: Some("last_fill_time".into()),
            settled_at: at,
            latency_seconds: latency,
            late: latency.is_some_and(crate::decide::late),
            backlog: false,
        }
    }

    /// A known history, figures worked out by hand: alpha ends 10 orders, 7 settled by the bot and 3
    /// corrected (12 s, 20 s, 300 s: one late); beta ends 3, 2 by the bot and 1 in a terminal conflict;
    /// one order of alpha settled before the window and one backlog correction of beta are left out.
    #[test]
    fn figures_on_a_known_history() {
        use chrono::TimeZone;
        let day = Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap();
        let mut rows: Vec<SettlementRow> =
            (0..7).map(|n| settlement(&format!("a{n}"), "alpha", SettledBy::Bot, None, day)).collect();
        rows.push(settlement("c1", "alpha", SettledBy::Ordersync, Some(12.0), day));
        rows.push(settlement("c2", "alpha", SettledBy::Ordersync, Some(20.0), day));
        rows.push(settlement("c3", "alpha", SettledBy::Ordersync, Some(300.0), day + chrono::Duration::days(1)));
        rows.push(settlement("b1", "beta", SettledBy::Bot, None, day));
        rows.push(settlement("b2", "beta", SettledBy::Bot, None, day));
        rows.push(SettlementRow { late: true, ..settlement("k1", "beta", SettledBy::Conflict, None, day) });
        rows.push(settlement("old", "alpha", SettledBy::Ordersync, Some(1.0), day - chrono::Duration::days(9)));
        // Ended 3 hours before ordersync first ran: a correction, outside both accuracies and latency.
        rows.push(SettlementRow {
            late: false,
            backlog: true,
            ..settlement("b3", "beta", SettledBy::Ordersync, Some(10_800.0), day)
        });
        let report = build(&rows, day - chrono::Duration::days(1), day + chrono::Duration::days(2));
        let o = &report.overall.accuracy;
        assert_eq!((o.settled, o.by_bot, o.by_ordersync, o.by_conflict, o.late, o.backlog), (13, 9, 3, 1, 2, 1));
        assert_eq!(o.bot_accuracy, Some(9.0 / 13.0));
        assert_eq!(o.effective_accuracy, Some(11.0 / 13.0));
        assert_eq!((report.bot_accuracy_met, report.effective_accuracy_met), (Some(false), Some(false)));
        let alpha = &report.per_bot["alpha"].accuracy;
        assert_eq!((alpha.settled, alpha.bot_accuracy, alpha.effective_accuracy), (10, Some(0.7), Some(0.9)));
        let beta = &report.per_bot["beta"].accuracy;
        assert_eq!((beta.settled, beta.backlog), (3, 1), "the backlog order is outside the SLI");
        assert_eq!(
            (beta.bot_accuracy, beta.effective_accuracy),
            (Some(2.0 / 3.0), Some(2.0 / 3.0)),
            "a conflict is a miss"
        );
        assert_eq!(report.per_day["2026-03-02"].accuracy.settled, 12);
        assert_eq!(report.per_day["2026-03-03"].accuracy.late, 1);
        let latency = &report.overall.latency;
        assert_eq!((latency.count, latency.p50_seconds, latency.max_seconds), (3, Some(20.0), Some(300.0)));
        assert_eq!(latency.mean_seconds, Some(332.0 / 3.0));
        assert_eq!(report.latency_goals_met, Some(false));
        assert_eq!(report.overall.corrections_by_status["FILLED"], 4, "the backlog correction is a correction");
        let shown = text(&report);
        assert!(shown.contains("Bot accuracy:       69.231% against 99.900%: MISSED (9 of 13"), "{shown}");
        assert!(shown.contains("3 corrected by ordersync, 1 terminal conflicts"), "{shown}");
        assert!(shown.contains("Effective accuracy: 84.615% against 99.900%: MISSED (11 of 13"), "{shown}");
        assert!(shown.contains("Corrected: 4 orders") && shown.contains("Backlog:   1 of them"), "{shown}");
        let page = html(&report);
        assert!(page.contains("69.231%") && page.contains("84.615%") && page.contains("1 of them backlog"));
    }
}
