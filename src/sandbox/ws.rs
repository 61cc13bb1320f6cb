//! The simulator's WebSocket user channel: subscribe with a JWT (verified like REST, without `uri`), a
//! `subscriptions` confirmation, a snapshot of live orders, then updates as orders change and a heartbeat
//! every second; `sequence_num` counts every message on the connection. Faults: dropped (the number is
//! used up), duplicated and reordered messages, disconnects and stalls.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use chrono::{SecondsFormat, Utc};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use crate::exchange::auth::verify;
use crate::exchange::ws::{Envelope, Heartbeat, Refusal, Subscribe, Subscriptions, UserEvent, WsOrder};
use crate::sandbox::server::ServerState;
use crate::sandbox::WsControl;

/// Orders per snapshot message; a larger snapshot comes in several messages.
const SNAPSHOT_CHUNK: usize = 50;
/// A connection that has not subscribed by then is closed.
const SUBSCRIBE_WITHIN: Duration = Duration::from_secs(5);

/// One of the user channel's types as JSON (`exchange::ws` says how Coinbase spells it).
fn value(message: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(message).unwrap_or(serde_json::Value::Null)
}

fn json_text(message: &impl serde::Serialize) -> String {
    serde_json::to_string(message).unwrap_or_default()
}

pub async fn upgrade(State(state): State<ServerState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| session(socket, state))
}

/// One connection's outgoing side: numbering, faults, and the message held back for reordering.
struct Outbox {
    sink: futures_util::stream::SplitSink<WebSocket, Message>,
    sequence: u64,
    held: Option<String>,
}

impl Outbox {
    /// Number and send one message, bent by the faults drawn for it. `Err` when the peer is gone.
    async fn send(&mut self, state: &ServerState, channel: &str, event: serde_json::Value) -> Result<(), ()> {
        let envelope = Envelope {
            channel: channel.to_string(),
            client_id: String::new(),
            timestamp: state.sandbox.now().to_rfc3339_opts(SecondsFormat::Nanos, true),
            sequence_num: self.sequence,
            events: vec![event],
        };
        let message = json_text(&envelope);
        self.sequence += 1;
        let (drop, duplicate, reorder) =
            if channel == "user" { state.sandbox.draw_ws_fault() } else { (false, false, false) };
        if drop {
            return Ok(());
        }
        if reorder && self.held.is_none() {
            self.held = Some(message);
            return Ok(());
        }
        self.raw(&message).await?;
        if duplicate {
            self.raw(&message).await?;
        }
        if let Some(held) = self.held.take() {
            self.raw(&held).await?;
        }
        Ok(())
    }

    async fn raw(&mut self, text: &str) -> Result<(), ()> {
        self.sink.send(Message::Text(text.to_string().into())).await.map_err(|_| ())
    }
}

async fn session(socket: WebSocket, state: ServerState) {
    let (sink, mut stream) = socket.split();
    let mut out = Outbox { sink, sequence: 0, held: None };
    // Subscribe to changes first, so nothing between the snapshot and the first update is lost.
    let mut changes = state.sandbox.changes();
    let mut control = state.sandbox.ws_control();
    let mut user = false;
    let mut heartbeats = false;
    let mut counter: u64 = 0;
    // The key the connection subscribed with: it sees only its own account's orders.
    let mut key: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = tokio::time::sleep(SUBSCRIBE_WITHIN);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline, if !user && !heartbeats => return,
            incoming = stream.next() => {
                let Some(Ok(Message::Text(text))) = incoming else {
                    match incoming {
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => continue,
                        _ => return,
                    }
                };
                let subscribe: Subscribe = match serde_json::from_str(&text) {
                    Ok(subscribe) => subscribe,
                    Err(error) => {
                        let _ = out.raw(&json_text(&Refusal::new(format!("bad message: {error}")))).await;
                        continue;
                    }
                };
                match verify(&subscribe.jwt, &state.keys, None, Utc::now().timestamp()) {
                    Ok(claims) => key = Some(claims.sub),
                    Err(error) => {
                        let _ = out.raw(&json_text(&Refusal::new(format!("authentication failure: {error}")))).await;
                        return;
                    }
                }
                if subscribe.kind != "subscribe" {
                    continue;
                }
                match subscribe.channel.as_str() {
                    "user" if !user => {
                        user = true;
                        let mut confirm = Subscriptions::default();
                        confirm.subscriptions.insert("user".into(), vec!["sandbox-user".into()]);
                        let confirm = value(&confirm);
                        if out.send(&state, "subscriptions", confirm).await.is_err() { return; }
                        let open: Vec<WsOrder> = state.sandbox.open_orders(key.as_deref());
                        let chunks: Vec<&[WsOrder]> = if open.is_empty() { vec![&[]] } else { open.chunks(SNAPSHOT_CHUNK).collect() };
                        for chunk in chunks {
                            let event = value(&UserEvent { kind: "snapshot".into(), orders: chunk.to_vec() });
                            if out.send(&state, "user", event).await.is_err() { return; }
                        }
                    }
                    "heartbeats" => heartbeats = true,
                    _ => {}
                }
            }
            change = changes.recv(), if user => {
                match change {
                    Ok(change) if change.account.is_some() && change.account != key => {}
                    Ok(change) => {
                        let event = value(&UserEvent { kind: "update".into(), orders: vec![change.order] });
                        if out.send(&state, "user", event).await.is_err() { return; }
                    }
                    // The connection fell behind: like Coinbase, drop it; the client resyncs on reconnect.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                }
            }
            _ = tick.tick(), if heartbeats => {
                let event = value(&Heartbeat { current_time: Utc::now().to_rfc3339(), heartbeat_counter: counter.into() });
                counter += 1;
                if out.send(&state, "heartbeats", event).await.is_err() { return; }
            }
            command = control.recv() => match command {
                Ok(WsControl::Disconnect) | Err(RecvError::Closed) => {
                    let _ = out.sink.send(Message::Close(None)).await;
                    return;
                }
                Ok(WsControl::Stall(duration)) => tokio::time::sleep(duration).await,
                Err(RecvError::Lagged(_)) => {}
            },
        }
    }
}
