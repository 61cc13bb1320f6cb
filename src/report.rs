//! The SLA report (`ordersync report`): order-status accuracy against the 99.9% target, sync latency
//! against the goals (average under 30 s, every completion within 2 minutes), and the orders that needed
//! correction, overall, per bot and per day. `build` is pure; `text`, `json` and `html` render it.
//!
//! Definitions, so the figures can be checked by hand:
//! - accuracy = match / (match + mismatch) checks; checks without a certain answer (unknown) are left out
//!   and reported beside it. No checks: no figure.
//! - percentiles are nearest-rank: the p-th is the ceil(p·n)-th smallest latency.
//! - latency is the exchange's completion time to ordersync's commit, for corrections that had one.
//!
//! Deliberately not here: SQL (the caller reads `Store::check_counts` and `Store::applied_events_since`).

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::{CheckCount, EventRow};

pub const ACCURACY_TARGET: f64 = 0.999;
pub const LATENCY_GOAL_AVERAGE_SECONDS: f64 = 30.0;
pub const LATENCY_GOAL_MAX_SECONDS: f64 = 120.0;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Checks {
    pub matched: i64,
    pub mismatched: i64,
    pub unknown: i64,
    /// match / (match + mismatch); `None` without any.
    pub accuracy: Option<f64>,
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
    pub checks: Checks,
    pub corrections: usize,
    pub corrections_by_status: BTreeMap<String, usize>,
    pub latency: Latency,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub accuracy_target: f64,
    pub accuracy_met: Option<bool>,
    pub latency_goals_met: Option<bool>,
    pub overall: Figures,
    pub per_bot: BTreeMap<String, Figures>,
    pub per_day: BTreeMap<String, Figures>,
    /// Completions per latency band, for the distribution chart: (band, count).
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
        within_2m: share(120.0),
    }
}

#[derive(Default)]
struct Tally {
    checks: Checks,
    corrections: usize,
    by_status: BTreeMap<String, usize>,
    latencies: Vec<f64>,
}

impl Tally {
    fn count(&mut self, outcome: &str, n: i64) {
        match outcome {
            "match" => self.checks.matched += n,
            "mismatch" => self.checks.mismatched += n,
            _ => self.checks.unknown += n,
        }
    }

    fn correction(&mut self, event: &EventRow) {
        self.corrections += 1;
        *self.by_status.entry(event.to_status.clone().unwrap_or_default()).or_default() += 1;
        if let Some(latency) = event.latency_seconds {
            self.latencies.push(latency);
        }
    }

    fn figures(self) -> Figures {
        let mut checks = self.checks;
        let decided = checks.matched + checks.mismatched;
        checks.accuracy = (decided > 0).then(|| checks.matched as f64 / decided as f64);
        Figures {
            checks,
            corrections: self.corrections,
            corrections_by_status: self.by_status,
            latency: latency_of(self.latencies),
        }
    }
}

/// The report over `counts` and the corrections in `events`, for `since..until`.
pub fn build(counts: &[CheckCount], events: &[EventRow], since: DateTime<Utc>, until: DateTime<Utc>) -> Report {
    let mut overall = Tally::default();
    let mut per_bot: BTreeMap<String, Tally> = BTreeMap::new();
    let mut per_day: BTreeMap<String, Tally> = BTreeMap::new();
    for count in counts {
        overall.count(&count.outcome, count.checks);
        per_bot.entry(count.bot.clone()).or_default().count(&count.outcome, count.checks);
        per_day.entry(count.day.clone()).or_default().count(&count.outcome, count.checks);
    }
    let mut bands = [
        ("< 1 s", 1.0, 0usize),
        ("1–5 s", 5.0, 0),
        ("5–30 s", 30.0, 0),
        ("30 s–2 min", 120.0, 0),
        ("2–10 min", 600.0, 0),
        ("> 10 min", f64::INFINITY, 0),
    ];
    for event in events.iter().filter(|e| e.detected_at >= since && e.detected_at <= until) {
        overall.correction(event);
        per_bot.entry(event.bot_id.clone().unwrap_or_else(|| "none".into())).or_default().correction(event);
        per_day.entry(event.detected_at.format("%Y-%m-%d").to_string()).or_default().correction(event);
        if let Some(latency) = event.latency_seconds {
            if let Some(band) = bands.iter_mut().find(|(_, limit, _)| latency < *limit) {
                band.2 += 1;
            }
        }
    }
    let overall = overall.figures();
    let accuracy_met = overall.checks.accuracy.map(|a| a >= ACCURACY_TARGET);
    let latency_goals_met = overall
        .latency
        .mean_seconds
        .zip(overall.latency.max_seconds)
        .map(|(mean, max)| mean < LATENCY_GOAL_AVERAGE_SECONDS && max <= LATENCY_GOAL_MAX_SECONDS);
    Report {
        since,
        until,
        accuracy_target: ACCURACY_TARGET,
        accuracy_met,
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
    let _ = writeln!(
        out,
        "Accuracy:  {} against {}: {} ({} matched, {} mismatched; {} checks without a certain answer left out)",
        percent(o.checks.accuracy),
        percent(Some(report.accuracy_target)),
        verdict(report.accuracy_met),
        o.checks.matched,
        o.checks.mismatched,
        o.checks.unknown
    );
    let _ = writeln!(
        out,
        "Latency:   p50 {}, p95 {}, p99 {}, mean {}, max {}; within 30 s {}, within 2 min {}: goals (mean < 30 s, all within 2 min) {}",
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
    let _ = writeln!(out, "Corrected: {} orders ({})", o.corrections, statuses.join(", "));
    for (title, rows) in [("Per bot", &report.per_bot), ("Per day", &report.per_day)] {
        let _ = writeln!(
            out,
            "\n{title}:\n{:<20} {:>10} {:>9} {:>10} {:>11} {:>10} {:>10}",
            "", "accuracy", "checks", "corrected", "p50", "p99", "in 30 s"
        );
        for (key, f) in rows {
            let _ = writeln!(
                out,
                "{:<20} {:>10} {:>9} {:>10} {:>11} {:>10} {:>10}",
                key,
                percent(f.checks.accuracy),
                f.checks.matched + f.checks.mismatched + f.checks.unknown,
                f.corrections,
                seconds(f.latency.p50_seconds),
                seconds(f.latency.p99_seconds),
                percent(f.latency.within_30s)
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
    let latency_bars: Vec<(String, f64, String)> =
        report.latency_bands.iter().map(|(band, n)| (band.clone(), *n as f64, n.to_string())).collect();
    let latency_max = latency_bars.iter().map(|b| b.1).fold(0.0, f64::max);
    let accuracy_bars: Vec<(String, f64, String)> = report
        .per_day
        .iter()
        .filter_map(|(day, f)| f.checks.accuracy.map(|a| (day[5..].to_string(), a, format!("{:.2}%", a * 100.0))))
        .collect();
    let mut rows = String::new();
    for (title, table) in [("Per bot", &report.per_bot), ("Per day", &report.per_day)] {
        let _ = write!(rows, "<h2>{title}</h2><table><tr><th></th><th>Accuracy</th><th>Checks</th><th>Corrected</th><th>p50</th><th>p95</th><th>p99</th><th>Within 30 s</th><th>Within 2 min</th></tr>");
        for (key, f) in table {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(key),
                percent(f.checks.accuracy),
                f.checks.matched + f.checks.mismatched + f.checks.unknown,
                f.corrections,
                seconds(f.latency.p50_seconds),
                seconds(f.latency.p95_seconds),
                seconds(f.latency.p99_seconds),
                percent(f.latency.within_30s),
                percent(f.latency.within_2m)
            );
        }
        rows.push_str("</table>");
    }
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ordersync SLA report</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;width:100%;margin-bottom:1.5em}}td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}.met{{color:#1a7f37}}.missed{{color:#cf222e}}\
         .cards{{display:flex;gap:1em}}.card{{flex:1;border:1px solid #ddd;border-radius:6px;padding:1em}}.big{{font-size:2em}}\
         figure{{margin:1em 0}}</style></head><body>\
         <h1>ordersync SLA report</h1><p>{} to {}</p><div class=\"cards\">\
         <div class=\"card\"><div>Order-status accuracy (target {})</div><div class=\"big {}\">{}</div><div>{} matched, {} mismatched; {} without a certain answer left out</div></div>\
         <div class=\"card\"><div>Sync latency p50 / p99</div><div class=\"big {}\">{} / {}</div><div>mean {}; {} within 30 s, {} within 2 min</div></div>\
         <div class=\"card\"><div>Orders corrected</div><div class=\"big\">{}</div></div></div>\
         {}{}{}</body></html>\n",
        report.since.format("%Y-%m-%d %H:%M UTC"),
        report.until.format("%Y-%m-%d %H:%M UTC"),
        percent(Some(report.accuracy_target)),
        if report.accuracy_met == Some(false) { "missed" } else { "met" },
        percent(o.checks.accuracy),
        o.checks.matched,
        o.checks.mismatched,
        o.checks.unknown,
        if report.latency_goals_met == Some(false) { "missed" } else { "met" },
        seconds(o.latency.p50_seconds),
        seconds(o.latency.p99_seconds),
        seconds(o.latency.mean_seconds),
        percent(o.latency.within_30s),
        percent(o.latency.within_2m),
        o.corrections,
        bar_chart("Sync latency distribution (completions per band)", &latency_bars, latency_max),
        bar_chart("Daily accuracy", &accuracy_bars, 1.0),
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
    fn no_checks_is_no_figure_not_a_perfect_one() {
        let now = Utc::now();
        let report = build(&[], &[], now, now);
        assert_eq!((report.overall.checks.accuracy, report.accuracy_met), (None, None));
        assert!(text(&report).contains("no data"));
    }
}
