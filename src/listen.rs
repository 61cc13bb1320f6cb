//! The real-time listener: Coinbase's user channel over WebSocket. An update that ends an order is news: it
//! schedules a check of that order at (message time + grace) through `Reconciler::ended_news`, so the bot
//! can write its own update first, and the figures written come from the REST API. A gap in
//! sequence numbers, a reconnect or a silent socket asks the reconciler for an immediate full pass, so
//! nothing is lost while the socket was deaf. Polling stays on as the safety net.
//!
//! Deliberately not here: the status logic (`decide.rs`), SQL (`db/`), the JSON shapes (`exchange/ws.rs`).

use std::time::Duration;

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::exchange::auth::CdpKey;
use crate::exchange::ws::{message_time, Envelope, Refusal, Subscribe, UserEvent};
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;

/// Re-subscribe with a fresh JWT this often: tokens live 120 s.
const JWT_REFRESH: Duration = Duration::from_secs(90);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub url: String,
    /// The account whose key subscribes: its orders' news only.
    pub account: String,
    /// Reconnect when nothing (not even a heartbeat) arrived for this long.
    pub stall_after: Duration,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("cancelled")]
    Cancelled,
    #[error("connecting failed: {0}")]
    Connect(String),
    #[error("no message for {0:?}: the connection is silent")]
    Stalled(Duration),
    #[error("the server closed the connection")]
    Closed,
    #[error("the connection failed: {0}")]
    Failed(String),
    #[error("the server refused the subscription: {0}")]
    Refused(String),
}

/// Gap detection over `sequence_num`, which Coinbase documents as counting messages so that a jump means
/// one was lost. Captures differ on whether heartbeats share the counter with the user channel, and it
/// restarts with each connection. Both forms are told apart as they come: a message on another channel
/// numbered right after the one before is evidence of one shared counter; from then on a gap is a jump past
/// the message before, whatever its channel. Until then each channel counts on its own, and a gap is a jump
/// in the user channel's own numbers (a lost heartbeat loses no order, so `heartbeat_counter` and
/// heartbeat jumps are not gaps). A repeat or a backward jump is a restart, never a gap; a new connection
/// starts a new tracker. A gap is a hint to resync (the reconciler coalesces wake-ups), never proof.
#[derive(Debug, Default)]
pub struct Sequences {
    /// The message before: its channel and number.
    previous: Option<(String, u64)>,
    /// Evidence that the channels share one counter.
    shared: bool,
    last_by_channel: std::collections::HashMap<String, u64>,
}

impl Sequences {
    /// Take one message's number; `Some(expected)` when it shows a gap.
    pub fn observe(&mut self, channel: &str, sequence: u64) -> Option<u64> {
        if let Some((previous_channel, previous)) = &self.previous {
            if previous_channel != channel && sequence == previous + 1 {
                self.shared = true;
            }
        }
        let gap = if self.shared {
            self.previous.as_ref().map(|(_, previous)| previous + 1).filter(|expected| sequence > *expected)
        } else {
            self.last_by_channel
                .get(channel)
                .map(|own| own + 1)
                .filter(|expected| sequence > *expected && channel != "heartbeats")
        };
        self.last_by_channel.insert(channel.to_string(), sequence);
        self.previous = Some((channel.to_string(), sequence));
        gap
    }
}

/// Listens to the user channel until cancelled, reconnecting with backoff.
pub struct Listener {
    settings: ListenerSettings,
    key: CdpKey,
    reconciler: Reconciler,
    metrics: Metrics,
}

impl Listener {
    pub fn new(settings: ListenerSettings, key: CdpKey, reconciler: Reconciler, metrics: Metrics) -> Listener {
        Listener { settings, key, reconciler, metrics }
    }

    /// Run until `token` is cancelled. Its log lines carry a `listen` span naming the account.
    pub async fn run(self, token: CancellationToken) {
        let span = tracing::info_span!("listen", account = %self.settings.account);
        self.listen(token).instrument(span).await;
    }

    async fn listen(self, token: CancellationToken) {
        let mut failures: u32 = 0;
        let mut connected_before = false;
        loop {
            let result = self.session(&token, connected_before, &mut failures).await;
            self.metrics.websocket_connected.with_label_values(&[self.settings.account.as_str()]).set(0);
            match result {
                SessionEnd::Cancelled => return,
                end => {
                    connected_before = true;
                    self.metrics.websocket_reconnects.inc();
                    let ceiling = Duration::from_millis(200)
                        .saturating_mul(2u32.saturating_pow(failures.min(16)))
                        .min(MAX_BACKOFF);
                    let pause = ceiling.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
                    tracing::warn!(reason = %end, retry_in_ms = pause.as_millis() as u64, "user-channel WebSocket lost; reconnecting");
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    fn subscribe(&self, channel: &str) -> Message {
        let message = Subscribe {
            kind: "subscribe".into(),
            channel: channel.into(),
            product_ids: Vec::new(),
            jwt: self.key.jwt(None, Utc::now().timestamp()),
        };
        Message::Text(serde_json::to_string(&message).unwrap_or_default().into())
    }

    async fn session(&self, token: &CancellationToken, reconnect: bool, failures: &mut u32) -> SessionEnd {
        let connecting =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(self.settings.url.as_str()));
        let socket = tokio::select! {
            () = token.cancelled() => return SessionEnd::Cancelled,
            result = connecting => match result {
                Ok(Ok((socket, _))) => socket,
                Ok(Err(error)) => return SessionEnd::Connect(error.to_string()),
                Err(_) => return SessionEnd::Connect(format!("no answer within {CONNECT_TIMEOUT:?}")),
            },
        };
        let (mut sink, mut stream) = socket.split();
        for channel in ["user", "heartbeats"] {
            if let Err(error) = sink.send(self.subscribe(channel)).await {
                return SessionEnd::Failed(error.to_string());
            }
        }
        if reconnect {
            // Whatever happened while the socket was down is fetched by a full pass now.
            self.reconciler.wake();
        }
        let mut last_sequence = Sequences::default();
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + JWT_REFRESH, JWT_REFRESH);
        loop {
            let next = tokio::time::timeout(self.settings.stall_after, stream.next());
            tokio::select! {
                () = token.cancelled() => {
                    let _ = sink.send(Message::Close(None)).await;
                    return SessionEnd::Cancelled;
                }
                _ = refresh.tick() => {
                    if let Err(error) = sink.send(self.subscribe("user")).await {
                        return SessionEnd::Failed(error.to_string());
                    }
                }
                received = next => match received {
                    Err(_) => {
                        self.reconciler.wake();
                        return SessionEnd::Stalled(self.settings.stall_after);
                    }
                    Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return SessionEnd::Closed,
                    Ok(Some(Err(error))) => return SessionEnd::Failed(error.to_string()),
                    Ok(Some(Ok(Message::Text(text)))) => {
                        if let Err(refused) = self.handle(&text, &mut last_sequence).await {
                            return SessionEnd::Refused(refused);
                        }
                        let connected =
                            self.metrics.websocket_connected.with_label_values(&[self.settings.account.as_str()]);
                        if connected.get() == 0 {
                            connected.set(1);
                            *failures = 0;
                            tracing::info!(url = %self.settings.url, "subscribed to the user channel");
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
    }

    /// Handle one message. `Err` only when the server refused us (an `error` message).
    async fn handle(&self, text: &str, last_sequence: &mut Sequences) -> Result<(), String> {
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(error) => {
                self.malformed(&error.to_string());
                return Ok(());
            }
        };
        if let Some(message) = Refusal::of(&value) {
            self.metrics.websocket_messages.with_label_values(&["error"]).inc();
            tracing::error!(%message, "the user channel answered with an error");
            return Err(message);
        }
        let envelope: Envelope = match serde_json::from_value(value) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.malformed(&error.to_string());
                return Ok(());
            }
        };
        if let Some(expected) = last_sequence.observe(&envelope.channel, envelope.sequence_num) {
            self.metrics.websocket_sequence_gaps.inc();
            tracing::warn!(expected, got = envelope.sequence_num, "WebSocket messages were lost; resyncing");
            self.reconciler.wake();
        }
        match envelope.channel.as_str() {
            "user" => self.user_events(&envelope),
            "heartbeats" => {
                // An authenticated channel's heartbeat: the exchange is up and takes the key.
                self.metrics.exchange_heard(&self.settings.account);
                self.metrics.websocket_messages.with_label_values(&["heartbeat"]).inc();
            }
            "subscriptions" => self.metrics.websocket_messages.with_label_values(&["subscriptions"]).inc(),
            _ => self.metrics.websocket_messages.with_label_values(&["other"]).inc(),
        }
        Ok(())
    }

    fn malformed(&self, why: &str) {
        self.metrics.websocket_messages.with_label_values(&["malformed"]).inc();
        tracing::warn!(%why, "unreadable WebSocket message ignored");
    }

    fn user_events(&self, envelope: &Envelope) {
        let at = match message_time(envelope) {
            Ok(at) => at,
            Err(why) => return self.malformed(&why),
        };
        for event in &envelope.events {
            let event: UserEvent = match serde_json::from_value(event.clone()) {
                Ok(event) => event,
                Err(error) => {
                    self.malformed(&error.to_string());
                    continue;
                }
            };
            let kind = match event.kind.as_str() {
                "snapshot" => "snapshot",
                "update" => "update",
                _ => "other",
            };
            self.metrics.websocket_messages.with_label_values(&[kind]).inc();
            for order in &event.orders {
                // News only: an order that ended is checked at (this message's time + grace), so the bot can
                // write it first; what is written then comes from the REST API.
                match order.parse() {
                    Ok(order) => self.reconciler.ended_news(order, at),
                    Err(why) => self.malformed(&format!("order {}: {why}", order.order_id)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed a stream of `(channel, sequence_num)` as the captures show them; the gaps it finds.
    fn gaps(stream: &[(&str, u64)]) -> Vec<u64> {
        let mut sequences = Sequences::default();
        stream.iter().filter_map(|(channel, n)| sequences.observe(channel, *n).map(|_| *n)).collect()
    }

    #[test]
    fn interleaved_heartbeats_and_user_messages_on_one_counter_are_no_gap() {
        let stream = [
            ("subscriptions", 0),
            ("user", 1),
            ("heartbeats", 2),
            ("heartbeats", 3),
            ("user", 4),
            ("heartbeats", 5),
            ("user", 6),
            ("user", 7),
            ("heartbeats", 8),
        ];
        assert_eq!(gaps(&stream), Vec::<u64>::new());
    }

    #[test]
    fn channels_with_counters_of_their_own_are_no_gap() {
        let stream =
            [("heartbeats", 3049), ("user", 1), ("heartbeats", 3050), ("user", 2), ("heartbeats", 3051), ("user", 3)];
        assert_eq!(gaps(&stream), Vec::<u64>::new());
    }

    #[test]
    fn a_lost_message_is_a_gap_once() {
        let shared = [("user", 1), ("heartbeats", 2), ("heartbeats", 4), ("user", 5), ("heartbeats", 6)];
        assert_eq!(gaps(&shared), vec![4], "message 3 was lost");
        let own = [("heartbeats", 10), ("user", 20), ("heartbeats", 11), ("user", 25), ("user", 26)];
        assert_eq!(gaps(&own), vec![25]);
        // Heartbeats numbered far ahead of the user channel (the reference's 3049), a user message lost.
        let ahead =
            [("heartbeats", 3049), ("user", 1), ("heartbeats", 3050), ("user", 2), ("heartbeats", 3051), ("user", 4)];
        assert_eq!(gaps(&ahead), vec![4]);
        // A lost heartbeat on a counter of its own loses no order.
        let heartbeat = [("heartbeats", 3049), ("user", 1), ("heartbeats", 3052), ("user", 2)];
        assert_eq!(gaps(&heartbeat), Vec::<u64>::new());
    }

    /// Observed in a public client's logs: a heartbeat delivered twice under different numbers, and 397
    /// followed by 152 on one connection.
    #[test]
    fn repeats_and_backward_jumps_cause_no_storm() {
        let stream = [
            ("heartbeats", 395),
            ("user", 396),
            ("heartbeats", 397),
            ("heartbeats", 397),
            ("heartbeats", 152),
            ("user", 153),
            ("heartbeats", 154),
            ("heartbeats", 155),
        ];
        assert_eq!(gaps(&stream), Vec::<u64>::new());
    }
}
