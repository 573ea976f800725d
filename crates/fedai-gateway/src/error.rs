//! Errors in OpenAI's shape (`{"error": {message, type, param, code}}`) with the status an
//! OpenAI SDK maps to the right exception: 400 bad request, 401 no key, 402 payment, 404 unknown
//! model, 413 body too large, 502 worker failure, 503 no worker, 504 timeout.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fedai_client::ClientError;
use fedai_protocol::ErrorCode;
use serde_json::json;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// A machine-readable code.
    pub code: &'static str,
    /// The request parameter at fault.
    pub param: Option<String>,
    /// For a person.
    pub message: String,
}

impl ApiError {
    fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            param: None,
            message: message.into(),
        }
    }

    /// 400: the request is wrong.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            param: param.map(str::to_owned),
            ..Self::new(400, "invalid_request_error", "invalid_request", message)
        }
    }

    /// 400: a parameter no live worker serves (never dropped silently).
    pub fn unsupported(param: &str) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..Self::new(
                400,
                "invalid_request_error",
                "unsupported_parameter",
                format!("`{param}` is not served by any worker this gateway can reach"),
            )
        }
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "invalid_request_error",
            "invalid_api_key",
            "a valid API key is required (Authorization: Bearer …)",
        )
    }

    /// 404: no worker advertises the model.
    pub fn unknown_model(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            ..Self::new(
                404,
                "invalid_request_error",
                "model_not_found",
                format!("no live worker serves model `{model}` (see GET /v1/models)"),
            )
        }
    }

    /// 402: over the budget or a price cap.
    pub fn payment(message: impl Into<String>) -> Self {
        Self::new(402, "insufficient_quota", "payment_required", message)
    }

    /// 503: workers serve the model but none can take the job now.
    pub fn no_worker(message: impl Into<String>) -> Self {
        Self::new(503, "service_unavailable", "no_worker", message)
    }

    /// 502: the gateway's own side failed (relay, a result that does not verify).
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(502, "api_error", "worker_failed", message)
    }

    /// 504: no answer in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "timeout", "timeout", message)
    }

    /// The body of the answer.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// What a failed job means to the app.
    pub fn from_client(e: &ClientError) -> Self {
        let last = match e {
            ClientError::Exhausted { last, .. } => last.as_ref(),
            e => e,
        };
        let message = e.to_string();
        match last {
            ClientError::NoWorker => Self::no_worker(message),
            ClientError::Payment(_) => Self::payment(message),
            ClientError::Timeout(_) | ClientError::Silent(_) => Self::timeout(message),
            ClientError::Job { code, .. } => match code {
                ErrorCode::InvalidRequest | ErrorCode::PromptTooLarge => {
                    Self::invalid(None, message)
                }
                ErrorCode::Capacity | ErrorCode::Shutdown => Self::no_worker(message),
                ErrorCode::PaymentFailed => Self::payment(message),
                _ => Self::upstream(message),
            },
            ClientError::Protocol(_) => Self::invalid(None, message),
            _ => Self::upstream(message),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut r = crate::json_response(status, &self.body());
        let h = r.headers_mut();
        match self.status {
            // A job may have been paid for: an SDK's automatic retry would pay again.
            502 | 504 => {
                h.insert("x-should-retry", HeaderValue::from_static("false"));
            }
            503 => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn job_failures_map_to_the_status_an_sdk_expects() {
        let exhausted = |last| ClientError::Exhausted {
            attempts: 2,
            last: Box::new(last),
        };
        let job = |code| ClientError::Job {
            code,
            reason: "r".into(),
        };
        for (e, status) in [
            (ClientError::NoWorker, 503),
            (ClientError::Payment("cap".into()), 402),
            (exhausted(ClientError::Timeout(Duration::from_secs(1))), 504),
            (exhausted(ClientError::Silent("s".into())), 504),
            (exhausted(job(ErrorCode::RunnerFailed)), 502),
            (exhausted(ClientError::InvalidResult("x".into())), 502),
            (job(ErrorCode::InvalidRequest), 400),
            (exhausted(ClientError::Payment("failed".into())), 402),
            (ClientError::Relay("down".into()), 502),
        ] {
            assert_eq!(ApiError::from_client(&e).status, status, "{e}");
        }
    }
}
