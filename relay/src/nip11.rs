//! The NIP-11 relay information document.

use fedai_protocol::kinds;
use serde_json::{json, Value};

use crate::config::{AuthMode, RelayConfig};

/// NIPs this relay implements.
pub const SUPPORTED_NIPS: &[u16] = &[1, 9, 11, 13, 40, 42, 45, 70, 77, 89, 90];

/// Build the document from the configuration.
pub fn document(c: &RelayConfig) -> Value {
    // NIP-11: `time` null keeps for ever (0 would mean "not stored"); an entry without `kinds`
    // covers every other kind.
    let mut retention: Vec<Value> = c
        .retention
        .iter()
        .map(|r| json!({"kinds": [r.kind], "time": (r.seconds > 0).then_some(r.seconds)}))
        .collect();
    if c.retention_other > 0 {
        retention.push(json!({"time": c.retention_other}));
    }
    json!({
        "name": c.name,
        "description": c.description,
        "contact": c.contact,
        "supported_nips": SUPPORTED_NIPS,
        "software": "https://example.invalid/fed_ai/relay",
        "version": env!("CARGO_PKG_VERSION"),
        "limitation": {
            "max_message_length": c.max_event_bytes + 1024,
            "max_content_length": c.max_event_bytes,
            "max_limit": c.max_query_results,
            "default_limit": crate::query::DEFAULT_LIMIT,
            "max_subscriptions": crate::query::MAX_SUBS,
            "max_filters": crate::query::MAX_FILTERS,
            "max_subid_length": crate::query::MAX_SUBID_BYTES,
            "min_pow_difficulty": 0,
            "auth_required": matches!(c.auth, Some(AuthMode::Read | AuthMode::Both)),
            "restricted_writes": c.auth.is_some() || c.min_pow_jobs > 0,
            "payment_required": false,
        },
        "retention": retention,
        "fedai": {
            "protocol": fedai_protocol::PROTOCOL_VERSION,
            "kinds": {
                "job_request": kinds::JOB_REQUEST,
                "job_result": kinds::JOB_RESULT,
                "embed_request": kinds::EMBED_REQUEST,
                "embed_result": kinds::EMBED_RESULT,
                "job_feedback": kinds::JOB_FEEDBACK,
                "metering": kinds::METERING,
                "award": kinds::AWARD,
                "payment_receipt": kinds::PAYMENT_RECEIPT,
                "capability_ad": kinds::CAPABILITY_AD,
            },
            "validated_kinds": kinds::FEDAI_KINDS,
            "min_pow_job_requests": c.min_pow_jobs,
            "events_per_minute_per_connection": c.events_per_minute,
            "events_per_minute_per_pubkey": c.events_per_minute_per_pubkey,
        },
    })
}
