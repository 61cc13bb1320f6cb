//! `ordersync sandbox`: the Coinbase simulator on its own, for trying ordersync by hand.

use std::collections::HashMap;
use std::num::NonZeroU32;

use anyhow::Context;

use crate::exchange::auth::{CdpKey, PublicKey};
use crate::sandbox::server::{self as sandbox_server, ServerState};
use crate::sandbox::{Faults, Sandbox};

use super::{signal_token, UsageError};

pub(super) async fn sandbox(
    listen: &str,
    keys: &[String],
    rate_limit: u32,
    seed: u64,
    faults: Option<&str>,
    clock_skew_ms: i64,
) -> anyhow::Result<()> {
    let mut accepted = HashMap::new();
    for entry in keys {
        let (name, path) =
            entry.split_once('=').ok_or_else(|| UsageError(format!("--key {entry:?}: expected NAME=FILE")))?;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading key file {path}"))?;
        let public = PublicKey::parse(&text).map_err(|e| UsageError(format!("--key {name}: {e}")))?;
        accepted.insert(name.to_string(), public);
    }
    if accepted.is_empty() {
        let key = CdpKey::generate("organizations/sandbox/apiKeys/sandbox");
        let path = std::env::temp_dir().join("ordersync-sandbox-key.pem");
        let pem = key.to_pem().ok_or_else(|| anyhow::anyhow!("generated key has no PEM form"))?;
        std::fs::write(&path, secrecy::ExposeSecret::expose_secret(&pem))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("no --key given: generated {} with name {}", path.display(), key.name());
        accepted.insert(key.name().to_string(), key.public_key());
    }
    let sandbox = Sandbox::new(seed);
    sandbox.skew(chrono::Duration::milliseconds(clock_skew_ms));
    // Which key and which replica asked, for GET /sandbox/requests.
    sandbox.record_requests();
    if let Some(faults) = faults {
        let faults: Faults = serde_json::from_str(faults).map_err(|e| UsageError(format!("--faults: {e}")))?;
        sandbox.set_faults(faults);
    }
    let state = ServerState::new(sandbox, accepted, NonZeroU32::new(rate_limit));
    let token = signal_token();
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    println!("Coinbase simulator listening on http://{}", listener.local_addr()?);
    sandbox_server::serve(listener, state, token).await.context("simulator server failed")
}
