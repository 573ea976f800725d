//! Resolving a request's inputs (NIP-90 `i` tags) into the text the runner reads.
//!
//! `text` (and `prompt`) inputs are inline. `url` inputs are fetched over http(s), public
//! addresses only unless the operator allows private ones, bounded in size and time. `event`
//! inputs are events whose content is the input; `job` inputs are the output of an earlier job
//! (its result event), which is NIP-90 job chaining. Both are fetched from the worker's relays
//! and the relay hint in the tag (checked like a URL).

use std::time::Duration;

use fedai_lightning::netguard;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{crypto, job::join_inputs, ErrorCode, InputTag, InputType};
use nostr_sdk::prelude::Client;

/// How long one input may take to fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an input could not be resolved: the code and reason sent to the customer.
pub type InputError = (ErrorCode, String);

fn bad(m: impl Into<String>) -> InputError {
    (ErrorCode::InvalidRequest, m.into())
}

/// Resolve every input into one prompt (inputs joined in order by a blank line), at most
/// `max_bytes` long.
pub async fn resolve(
    client: &Client,
    keys: &Keys,
    customer: &PublicKey,
    inputs: &[InputTag],
    max_bytes: usize,
    allow_private: bool,
) -> Result<String, InputError> {
    let mut parts = Vec::with_capacity(inputs.len());
    let mut total = 0usize;
    for (n, i) in inputs.iter().enumerate() {
        let text = match i.kind {
            InputType::Text => i.data.clone(),
            InputType::Chat => return Err(bad("a chat input must be the request's only input")),
            InputType::Url => netguard::fetch_text(
                &i.data,
                max_bytes.saturating_sub(total),
                allow_private,
                FETCH_TIMEOUT,
            )
            .await
            .map_err(|e| bad(format!("input {n} (url): {e}")))?,
            InputType::Event | InputType::Job => {
                fetch_event_input(client, keys, customer, i, allow_private)
                    .await
                    .map_err(|e| bad(format!("input {n} ({}): {e}", i.kind.as_str())))?
            }
        };
        total += text.len();
        if total > max_bytes {
            return Err((
                ErrorCode::PromptTooLarge,
                format!("the inputs are over {max_bytes} bytes"),
            ));
        }
        parts.push(text);
    }
    Ok(join_inputs(parts.iter().map(String::as_str)))
}

/// The content of the event an `event` input names, or of the result of the job a `job`
/// input names.
///
/// Someone else's private data never becomes this customer's input: an encrypted event is read
/// only when `customer` is a party to it (its author or the customer it names). A job's result
/// counts only when it answers that job (its `e`), and, when the job named its providers, only
/// from one of them; an `event` input must be that very event.
async fn fetch_event_input(
    client: &Client,
    keys: &Keys,
    customer: &PublicKey,
    input: &InputTag,
    allow_private: bool,
) -> Result<String, String> {
    let id = EventId::from_hex(input.data.trim()).map_err(|_| "not an event id".to_owned())?;
    let filter = match input.kind {
        // The job's results, and the job request itself (whom it named).
        InputType::Job => Filter::new()
            .kinds((6000..7000).map(Kind::from_u16))
            .event(id)
            .limit(16),
        _ => Filter::new().id(id),
    };
    let mut events = fetch(client, filter.clone(), input, allow_private).await?;
    let providers: Vec<PublicKey> = if input.kind == InputType::Job {
        fetch(client, Filter::new().id(id), input, allow_private)
            .await?
            .into_iter()
            .find(|e| e.id == id && e.verify().is_ok())
            .map(|r| r.tags.public_keys().collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    // Every event is verified before use; a job's earliest verified result counts.
    events.retain(|e| e.verify().is_ok());
    events.sort_by_key(|e| e.created_at);
    let ev = events
        .into_iter()
        .find(|e| match input.kind {
            InputType::Job => {
                e.tags.event_ids().any(|x| x == id)
                    && (providers.is_empty() || providers.contains(&e.pubkey))
            }
            _ => e.id == id,
        })
        .ok_or_else(|| match input.kind {
            InputType::Job => "no result of that job was found".to_owned(),
            _ => "the event was not found".to_owned(),
        })?;
    let encrypted = ev
        .tags
        .iter()
        .any(|t| t.as_slice().first().map(String::as_str) == Some("encrypted"));
    if !encrypted {
        return Ok(ev.content);
    }
    // Decryption works both ways between two keys: without this check, any customer could
    // have us open another customer's private request or result and hand it back.
    let parties: Vec<PublicKey> = std::iter::once(ev.pubkey)
        .chain(ev.tags.public_keys())
        .collect();
    if !parties.contains(customer) || !parties.contains(&keys.public_key()) {
        return Err("that event is encrypted to someone else".to_owned());
    }
    let peer = if ev.pubkey == keys.public_key() {
        *customer
    } else {
        ev.pubkey
    };
    crypto::decrypt(keys, &peer, &ev.content)
        .map_err(|_| "that event is encrypted to someone else".to_owned())
}

/// Events from our relays, or else from the input's relay hint (checked, its host's addresses
/// all public unless private ones are allowed) through a short-lived client of its own.
async fn fetch(
    client: &Client,
    filter: Filter,
    input: &InputTag,
    allow_private: bool,
) -> Result<Vec<Event>, String> {
    let mut events: Vec<Event> = client
        .fetch_events(filter.clone())
        .timeout(FETCH_TIMEOUT)
        .await
        .map(|e| e.into_iter().collect())
        .unwrap_or_default();
    if events.is_empty() {
        if let Some(relay) = &input.relay {
            netguard::check_resolved(relay, &["wss", "ws"], allow_private)
                .await
                .map_err(|e| e.0)?;
            let hint = Client::default();
            if hint.add_relay(relay.as_ref() as &str).await.is_ok() {
                hint.connect().and_wait(Duration::from_secs(3)).await;
                if let Ok(found) = hint.fetch_events(filter).timeout(FETCH_TIMEOUT).await {
                    events.extend(found);
                }
            }
            hint.shutdown().await;
        }
    }
    Ok(events)
}
