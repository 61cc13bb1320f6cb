//! E-mail from ordersync itself, for teams without Alertmanager: one mail when orders start being stuck
//! (pending longer than `stuck_after`) listing them, a reminder every `remind_every` while it lasts, a
//! resolved mail when it clears; never more than `max_per_hour`. An SMTP failure is logged, counted and
//! retried at the next tick; it never touches the reconciler.
//!
//! Deliberately not here: deciding what is stuck (the pending rows and `stuck_after` say so) and anything
//! about orders beyond listing them. `Notifier` is pure; `run` does the I/O.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{format_duration, EmailConfig, SmtpTls};
use crate::db::{ConflictKind, Store};
use crate::decide::{PendingKind, VerdictWord};
use crate::metrics::Metrics;

/// One stuck order (or terminal conflict) as the mail lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckOrder {
    /// A terminal row the exchange ended otherwise (or a row naming another product), not a stuck one.
    pub conflict: bool,
    /// A pending order the not-found policy wrote off in the last hour.
    pub written_off: bool,
    pub order_id: String,
    pub bot: String,
    pub product: String,
    pub age_seconds: i64,
    pub last_exchange_status: String,
    /// What ordersync did about it, in words.
    pub action: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailKind {
    Opened,
    Reminder,
    Resolved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    Send(MailKind),
    /// A mail was due but the hourly cap was reached.
    Suppressed(MailKind),
}

#[derive(Debug, Clone)]
struct Incident {
    started: DateTime<Utc>,
    last_sent: Option<DateTime<Utc>>,
}

/// The incident state machine. Pure: it is told the time and what is stuck, and what was sent.
#[derive(Debug, Clone)]
pub struct Notifier {
    remind_every: Duration,
    max_per_hour: u32,
    incident: Option<Incident>,
    sent: VecDeque<DateTime<Utc>>,
}

impl Notifier {
    pub fn new(remind_every: Duration, max_per_hour: u32) -> Notifier {
        Notifier { remind_every, max_per_hour, incident: None, sent: VecDeque::new() }
    }

    /// Remind and cap by these from now on (an incident under way goes on).
    pub fn set_limits(&mut self, remind_every: Duration, max_per_hour: u32) {
        self.remind_every = remind_every;
        self.max_per_hour = max_per_hour;
    }

    /// What to send now. Call `sent` when a mail went out; a failed mail is simply asked for again.
    pub fn decide(&mut self, stuck: &[StuckOrder], now: DateTime<Utc>) -> Decision {
        let hour_ago = now - chrono::Duration::hours(1);
        while self.sent.front().is_some_and(|at| *at <= hour_ago) {
            self.sent.pop_front();
        }
        let remind_every = chrono::Duration::from_std(self.remind_every).unwrap_or(chrono::Duration::MAX);
        let due = match (&self.incident, stuck.is_empty()) {
            (None, true) => None,
            (None, false) => {
                self.incident = Some(Incident { started: now, last_sent: None });
                Some(MailKind::Opened)
            }
            (Some(incident), false) => match incident.last_sent {
                None => Some(MailKind::Opened),
                Some(last) if now - last >= remind_every => Some(MailKind::Reminder),
                Some(_) => None,
            },
            (Some(incident), true) => {
                if incident.last_sent.is_some() {
                    Some(MailKind::Resolved)
                } else {
                    // Nobody was told it started; nobody needs telling it ended.
                    self.incident = None;
                    None
                }
            }
        };
        match due {
            None => Decision::Nothing,
            Some(kind) if self.sent.len() >= self.max_per_hour as usize => Decision::Suppressed(kind),
            Some(kind) => Decision::Send(kind),
        }
    }

    /// A mail of `kind` went out at `now`.
    pub fn sent(&mut self, kind: MailKind, now: DateTime<Utc>) {
        self.sent.push_back(now);
        match kind {
            MailKind::Resolved => self.incident = None,
            MailKind::Opened | MailKind::Reminder => {
                if let Some(incident) = &mut self.incident {
                    incident.last_sent = Some(now);
                }
            }
        }
    }

    /// When the current incident started.
    pub fn started(&self) -> Option<DateTime<Utc>> {
        self.incident.as_ref().map(|i| i.started)
    }
}

/// An age for the mail; a negative one is unknown (the row's creation time cannot be read).
fn age(seconds: i64) -> String {
    match seconds {
        s if s < 0 => "unknown".to_string(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Subject and body of a mail.
pub fn compose(
    kind: MailKind,
    stuck: &[StuckOrder],
    stuck_after: Duration,
    started: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (String, String) {
    let threshold = format_duration(stuck_after);
    if kind == MailKind::Resolved {
        let lasted = started.map(|s| age((now - s).num_seconds())).unwrap_or_else(|| "?".into());
        let body = format!(
            "No order has been stuck pending longer than {threshold} any more, and no terminal conflict stands.\nThe incident started at {} and lasted {lasted}.\n",
            started.map(|s| s.to_rfc3339()).unwrap_or_default()
        );
        return ("[ordersync] RESOLVED: no orders stuck pending, no terminal conflicts".into(), body);
    }
    let mut bots: Vec<&str> = stuck.iter().map(|o| o.bot.as_str()).collect();
    bots.sort_unstable();
    bots.dedup();
    let prefix = if kind == MailKind::Reminder { "[ordersync] STILL: " } else { "[ordersync] " };
    let (written_off, stuck): (Vec<&StuckOrder>, Vec<&StuckOrder>) = stuck.iter().partition(|o| o.written_off);
    let (conflicts, pending): (Vec<&StuckOrder>, Vec<&StuckOrder>) = stuck.into_iter().partition(|o| o.conflict);
    let mut what = Vec::new();
    if !pending.is_empty() {
        what.push(format!("{} stuck pending longer than {threshold}", counted(pending.len(), "order")));
    }
    if !conflicts.is_empty() {
        what.push(counted(conflicts.len(), "terminal conflict"));
    }
    if !written_off.is_empty() {
        what.push(format!("{} Coinbase never knew written off", counted(written_off.len(), "order")));
    }
    let subject = format!("{prefix}{} (bots: {})", what.join(", "), bots.join(", "));
    let mut body = String::new();
    if !conflicts.is_empty() {
        body.push_str(
            "TERMINAL CONFLICTS: the bot's row says the order ended one way, Coinbase says another (e.g. cancelled\n\
             in the table, FILLED on the exchange): a position the bot does not know about. ordersync never writes\n\
             these rows; fix them by hand (docs/runbooks.md#ordersyncterminalconflict).\n\n",
        );
        body.push_str(&format!("{:<38}  {:<12}  {:<12}  {}\n", "ORDER_ID", "BOT", "PRODUCT", "ROW / EXCHANGE"));
        for order in &conflicts {
            body.push_str(&format!(
                "{:<38}  {:<12}  {:<12}  {}\n",
                order.order_id, order.bot, order.product, order.action
            ));
        }
        body.push('\n');
    }
    if !written_off.is_empty() {
        body.push_str(
            "WRITTEN OFF: pending orders Coinbase answered 404 for, repeatedly, while it answered other orders; the\n\
             not-found policy wrote them (docs/runbooks.md#ordersyncorderswrittenoff).\n\n",
        );
        for order in &written_off {
            body.push_str(&format!(
                "{:<38}  {:<12}  {:<12}  {}\n",
                order.order_id, order.bot, order.product, order.action
            ));
        }
        body.push('\n');
    }
    if pending.is_empty() {
        body.push_str("\nSee /api/v1/trades/sync-status on ordersync.\n");
        return (subject, body);
    }
    body.push_str(&format!(
        "These orders have been pending in the bot's database for longer than {threshold}, and the exchange says\n\
         they ended, gave no certain answer, or was not asked yet (resting orders, live on the exchange, are not\n\
         listed). A bot waiting on them may be blocked from trading.\n\n{:<38}  {:<12}  {:<12}  {:>8}  {:<22}  {}\n",
        "ORDER_ID", "BOT", "PRODUCT", "AGE", "LAST EXCHANGE STATUS", "WHAT ORDERSYNC DID"
    ));
    for order in pending {
        body.push_str(&format!(
            "{:<38}  {:<12}  {:<12}  {:>8}  {:<22}  {}\n",
            order.order_id,
            order.bot,
            order.product,
            age(order.age_seconds),
            order.last_exchange_status,
            order.action
        ));
    }
    body.push_str("\nSee docs/runbooks.md#ordersyncordersstuck, and /api/v1/trades/sync-status on ordersync.\n");
    (subject, body)
}

/// What ordersync did about a stuck order, from its check state's last verdict (as stored) and error.
fn action_words(verdict: Option<&str>, error: Option<&str>) -> String {
    let Some(word) = verdict else { return "not checked yet".into() };
    match (VerdictWord::parse(word), error) {
        (Some(VerdictWord::InSync), _) => "checked: still live on the exchange; left pending".into(),
        (Some(VerdictWord::Flagged), Some(error)) => format!("flagged for a human: {error}"),
        (Some(VerdictWord::Unresolved), Some(error)) => format!("{error}; left pending, asked again"),
        _ => format!("{word}; left pending"),
    }
}

/// `1 order`, `3 orders`.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The orders stuck pending longer than `stuck_after` (resting ones, live on the exchange, are not stuck),
/// with what ordersync knows of them, then the terminal conflicts.
async fn stuck_orders(store: &Store, stuck_after: Duration) -> Result<Vec<StuckOrder>, crate::db::StoreError> {
    let now = Utc::now();
    let cutoff = now - chrono::Duration::from_std(stuck_after).unwrap_or_default();
    // A row whose age cannot be read counts as stuck.
    let rows: Vec<_> =
        store.pending_orders().await?.into_iter().filter(|r| r.created_at.is_none_or(|at| at < cutoff)).collect();
    let ids: Vec<_> = rows.iter().map(|r| r.order_id.clone()).collect();
    let states = store.check_states(&ids).await?;
    let conflicts = store.conflicts().await?;
    let stuck = rows
        .into_iter()
        .filter(|row| {
            let last = states.get(&row.order_id).and_then(|s| s.last_exchange_status.as_deref());
            PendingKind::of(last) == PendingKind::Blocking
        })
        .map(|row| {
            let state = states.get(&row.order_id);
            StuckOrder {
                conflict: false,
                written_off: false,
                age_seconds: row.age(now).map_or(-1, |age| age.num_seconds()),
                order_id: row.order_id.to_string(),
                bot: row.bot_id.unwrap_or_else(|| "-".into()),
                product: row.product_id.unwrap_or_else(|| "-".into()),
                last_exchange_status: state.and_then(|s| s.last_exchange_status.clone()).unwrap_or_else(|| "-".into()),
                action: action_words(
                    state.map(|s| s.last_verdict.as_str()),
                    state.and_then(|s| s.last_error.as_deref()),
                ),
            }
        });
    let conflicts = conflicts.into_iter().map(|c| StuckOrder {
        conflict: true,
        written_off: false,
        order_id: c.order_id,
        bot: c.bot_id.unwrap_or_else(|| "-".into()),
        product: c.product_id.unwrap_or_else(|| "-".into()),
        age_seconds: (now - c.found_at).num_seconds(),
        last_exchange_status: c.exchange_status.clone(),
        action: match c.kind {
            ConflictKind::Position => format!("row {} / Coinbase {}", c.row_status, c.exchange_status),
            ConflictKind::Product => format!(
                "product conflict: Coinbase's order is for {}; not written",
                c.exchange_product_id.as_deref().unwrap_or("?")
            ),
        },
    });
    // Orders the not-found policy wrote off in the last hour: told once, in the mail of the hour.
    let written_off = store.written_off_since(now - chrono::Duration::hours(1)).await?;
    let written_off = written_off.into_iter().map(|event| StuckOrder {
        conflict: false,
        written_off: true,
        order_id: event.order_id,
        bot: event.bot_id.unwrap_or_else(|| "-".into()),
        product: event.product_id.unwrap_or_else(|| "-".into()),
        age_seconds: (now - event.detected_at).num_seconds(),
        last_exchange_status: "NOT_FOUND".into(),
        action: format!(
            "written off as {} by the not-found policy: {}",
            event.to_status.as_deref().unwrap_or("?"),
            event.note.as_deref().unwrap_or("")
        ),
    });
    Ok(stuck.chain(conflicts).chain(written_off).collect())
}

/// The SMTP transport the config describes.
///
/// # Errors
/// A message naming the bad setting.
pub fn transport(config: &EmailConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls = match config.tls {
        SmtpTls::None => Tls::None,
        SmtpTls::StartTls | SmtpTls::Tls => {
            let parameters =
                TlsParameters::new(config.host.clone()).map_err(|e| format!("email TLS for {}: {e}", config.host))?;
            if config.tls == SmtpTls::Tls {
                Tls::Wrapper(parameters)
            } else {
                Tls::Required(parameters)
            }
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.clone())
        .port(config.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(30)));
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose_secret().to_string()));
    }
    Ok(builder.build())
}

/// The headers that thread an incident's mails: the mail that opens it carries the incident's id as its
/// `Message-ID`; reminders and the resolved mail get one of their own (from the incident and the time it is
/// sent, on the sender's domain) and answer the first (`In-Reply-To`, `References`), so a mail client shows
/// one conversation per incident. Returns `(message id, in reply to)`.
pub fn thread(kind: MailKind, started: DateTime<Utc>, now: DateTime<Utc>, domain: &str) -> (String, Option<String>) {
    let incident = format!("<ordersync-incident-{}@{domain}>", started.timestamp_millis());
    let follow_up =
        |word: &str| format!("<ordersync-{word}-{}-{}@{domain}>", started.timestamp_millis(), now.timestamp_millis());
    match kind {
        MailKind::Opened => (incident, None),
        MailKind::Reminder => (follow_up("reminder"), Some(incident)),
        MailKind::Resolved => (follow_up("resolved"), Some(incident)),
    }
}

async fn send(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    config: &EmailConfig,
    (kind, started, now): (MailKind, DateTime<Utc>, DateTime<Utc>),
    subject: &str,
    body: &str,
) -> Result<(), String> {
    let from: Mailbox = config.from.parse().map_err(|e| format!("email from {:?}: {e}", config.from))?;
    let (id, reply_to) = thread(kind, started, now, from.email.domain());
    // Mail filters expect a Message-ID and a Date (lettre adds it), and an automated mail to say so (RFC 3834:
    // no vacation auto-replies to it).
    let mut message = Message::builder()
        .from(from)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        // lettre sets MIME-Version only for its multipart and attachment bodies; a plain body needs it too
        // (RFC 2045), and filters count its absence against a mail.
        .header(lettre::message::header::MIME_VERSION_1_0)
        .message_id(Some(id))
        .user_agent(format!("ordersync {}", env!("CARGO_PKG_VERSION")))
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Auto-Submitted"), "auto-generated".into()));
    if let Some(first) = reply_to {
        message = message.in_reply_to(first.clone()).references(first);
    }
    for to in &config.to {
        message = message.to(to.parse().map_err(|e| format!("email to {to:?}: {e}"))?);
    }
    let message = message.body(body.to_string()).map_err(|e| format!("building the mail: {e}"))?;
    transport.send(message).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Check every `every` until cancelled; send what `Notifier` asks for.
pub async fn run(
    live: watch::Receiver<(EmailConfig, Duration)>,
    store: Store,
    metrics: Metrics,
    every: Duration,
    token: CancellationToken,
) {
    // The SMTP server is fixed for the task's life; recipients, limits and `stuck_after` are read at each
    // check (`SIGHUP` changes them).
    let (config, _) = live.borrow().clone();
    let transport = match transport(&config) {
        Ok(transport) => transport,
        Err(error) => {
            tracing::error!(%error, "e-mail alerts are off: the SMTP settings do not work");
            return;
        }
    };
    let mut notifier = Notifier::new(config.remind_every, config.max_per_hour);
    let passes = || {
        ["success", "failure"]
            .iter()
            .map(|result| metrics.reconcile_runs.with_label_values(&[result]).get())
            .sum::<u64>()
    };
    loop {
        let (config, stuck_after) = live.borrow().clone();
        notifier.set_limits(config.remind_every, config.max_per_hour);
        // Say nothing before the first pass: it may fix what looks stuck, and it says what the exchange knows.
        let ready = passes() > 0;
        match stuck_orders(&store, stuck_after).await {
            Ok(_) if !ready => {}
            Ok(stuck) => {
                let now = Utc::now();
                match notifier.decide(&stuck, now) {
                    Decision::Nothing => {}
                    Decision::Suppressed(kind) => {
                        metrics.alert_emails.with_label_values(&["suppressed"]).inc();
                        tracing::warn!(
                            ?kind,
                            max_per_hour = config.max_per_hour,
                            "alert e-mail not sent: hourly cap reached"
                        );
                    }
                    Decision::Send(kind) => {
                        let started = notifier.started();
                        let (subject, body) = compose(kind, &stuck, stuck_after, started, now);
                        match send(&transport, &config, (kind, started.unwrap_or(now), now), &subject, &body).await {
                            Ok(()) => {
                                notifier.sent(kind, now);
                                metrics.alert_emails.with_label_values(&["sent"]).inc();
                                tracing::info!(?kind, stuck = stuck.len(), %subject, "alert e-mail sent");
                            }
                            Err(error) => {
                                metrics.alert_emails.with_label_values(&["failure"]).inc();
                                tracing::warn!(?kind, %error, host = %config.host, "sending the alert e-mail failed; trying again at the next check");
                            }
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read stuck orders for e-mail alerts"),
        }
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuck(n: usize) -> Vec<StuckOrder> {
        (0..n)
            .map(|i| StuckOrder {
                conflict: false,
                written_off: false,
                order_id: format!("order-{i}"),
                bot: if i % 2 == 0 { "alpha".into() } else { "beta".into() },
                product: "AVNT-USD".into(),
                age_seconds: 900,
                last_exchange_status: "OPEN".into(),
                action: "checked".into(),
            })
            .collect()
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
            + chrono::Duration::minutes(minutes)
    }

    #[test]
    fn one_mail_per_incident_then_reminders_then_resolved() {
        let mut notifier = Notifier::new(Duration::from_secs(30 * 60), 10);
        assert_eq!(notifier.decide(&[], at(0)), Decision::Nothing);
        assert_eq!(notifier.decide(&stuck(2), at(1)), Decision::Send(MailKind::Opened));
        notifier.sent(MailKind::Opened, at(1));
        assert_eq!(notifier.decide(&stuck(3), at(2)), Decision::Nothing, "more orders stuck is the same incident");
        assert_eq!(notifier.decide(&stuck(3), at(30)), Decision::Nothing);
        assert_eq!(notifier.decide(&stuck(3), at(31)), Decision::Send(MailKind::Reminder));
        notifier.sent(MailKind::Reminder, at(31));
        assert_eq!(notifier.decide(&[], at(35)), Decision::Send(MailKind::Resolved));
        notifier.sent(MailKind::Resolved, at(35));
        assert_eq!(notifier.decide(&[], at(36)), Decision::Nothing);
        assert_eq!(notifier.decide(&stuck(1), at(40)), Decision::Send(MailKind::Opened), "a new incident");
    }

    #[test]
    fn a_failed_mail_is_asked_for_again() {
        let mut notifier = Notifier::new(Duration::from_secs(3600), 10);
        assert_eq!(notifier.decide(&stuck(1), at(0)), Decision::Send(MailKind::Opened));
        assert_eq!(notifier.decide(&stuck(1), at(1)), Decision::Send(MailKind::Opened));
        notifier.sent(MailKind::Opened, at(1));
        assert_eq!(notifier.decide(&[], at(2)), Decision::Send(MailKind::Resolved));
        assert_eq!(notifier.decide(&[], at(3)), Decision::Send(MailKind::Resolved), "until it goes out");
    }

    #[test]
    fn an_incident_nobody_was_told_of_ends_silently() {
        let mut notifier = Notifier::new(Duration::from_secs(3600), 0);
        assert_eq!(notifier.decide(&stuck(1), at(0)), Decision::Suppressed(MailKind::Opened));
        assert_eq!(notifier.decide(&[], at(1)), Decision::Nothing);
    }

    #[test]
    fn never_more_than_the_hourly_cap() {
        let mut notifier = Notifier::new(Duration::from_secs(60), 3);
        let mut sent = 0;
        for minute in 0..60 {
            if let Decision::Send(kind) = notifier.decide(&stuck(1), at(minute)) {
                notifier.sent(kind, at(minute));
                sent += 1;
            }
        }
        assert_eq!(sent, 3);
        assert_eq!(notifier.decide(&stuck(1), at(61)), Decision::Send(MailKind::Reminder), "the window moved on");
    }

    #[test]
    fn terminal_conflicts_are_mailed_before_stuck_orders() {
        let mut orders = stuck(1);
        orders.push(StuckOrder {
            conflict: true,
            written_off: false,
            order_id: "order-c".into(),
            bot: "gamma".into(),
            product: "BTC-USD".into(),
            age_seconds: 0,
            last_exchange_status: "FILLED".into(),
            action: "row cancelled / Coinbase FILLED".into(),
        });
        let (subject, body) = compose(MailKind::Opened, &orders, Duration::from_secs(300), Some(at(0)), at(5));
        assert_eq!(
            subject,
            "[ordersync] 1 order stuck pending longer than 5m, 1 terminal conflict (bots: alpha, gamma)"
        );
        let conflict = body.find("order-c").unwrap();
        assert!(body.contains("TERMINAL CONFLICTS") && body.contains("row cancelled / Coinbase FILLED"), "{body}");
        assert!(conflict < body.find("order-0").unwrap(), "conflicts first: {body}");
    }

    #[test]
    fn orders_written_off_by_the_not_found_policy_are_mailed_in_a_section_of_their_own() {
        let orders = vec![StuckOrder {
            conflict: false,
            written_off: true,
            order_id: "order-w".into(),
            bot: "delta".into(),
            product: "AVNT-USD".into(),
            age_seconds: 60,
            last_exchange_status: "NOT_FOUND".into(),
            action: "written off as failed by the not-found policy: 404 at 10:00, 10:30, 11:00".into(),
        }];
        let (subject, body) = compose(MailKind::Opened, &orders, Duration::from_secs(300), Some(at(0)), at(5));
        assert_eq!(subject, "[ordersync] 1 order Coinbase never knew written off (bots: delta)");
        assert!(body.contains("WRITTEN OFF") && body.contains("order-w") && body.contains("404 at 10:00"), "{body}");
        assert!(!body.contains("stuck pending"), "not listed as stuck: {body}");
    }

    #[test]
    fn an_incidents_mails_are_one_thread() {
        let started = at(0);
        let (opened, none) = thread(MailKind::Opened, started, started, "example.com");
        assert_eq!(none, None);
        assert!(opened.starts_with("<ordersync-incident-") && opened.ends_with("@example.com>"), "{opened}");
        let mut ids = vec![opened.clone()];
        for (kind, sent) in [(MailKind::Reminder, at(60)), (MailKind::Reminder, at(120)), (MailKind::Resolved, at(150))]
        {
            let (id, reply_to) = thread(kind, started, sent, "example.com");
            assert_eq!(reply_to, Some(opened.clone()), "{kind:?}");
            assert!(id.starts_with("<ordersync-") && id.ends_with("@example.com>"), "on the sender's domain: {id}");
            assert!(!ids.contains(&id), "each mail its own id: {id}");
            ids.push(id);
        }
        assert_ne!(thread(MailKind::Opened, at(60), at(60), "example.com").0, opened, "another incident");
    }

    #[test]
    fn the_mail_lists_every_stuck_order_and_names_the_bots() {
        let (subject, body) = compose(MailKind::Opened, &stuck(3), Duration::from_secs(300), Some(at(0)), at(5));
        assert_eq!(subject, "[ordersync] 3 orders stuck pending longer than 5m (bots: alpha, beta)");
        for i in 0..3 {
            assert!(body.contains(&format!("order-{i}")), "{body}");
        }
        assert!(body.contains("LAST EXCHANGE STATUS") && body.contains("OPEN") && body.contains("15m"));
        let (subject, body) = compose(MailKind::Resolved, &[], Duration::from_secs(300), Some(at(0)), at(12));
        assert_eq!(subject, "[ordersync] RESOLVED: no orders stuck pending, no terminal conflicts");
        assert!(body.contains("lasted 12m"), "{body}");
    }
}
