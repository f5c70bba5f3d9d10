//! API errors: a status and a JSON body `{"error": {"code": ..., "message": ...}}`.
//! Codes are stable (clients branch on them); messages are for people.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal`, logged.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(error = %message, "HTTP request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"mailspool\""),
            );
        }
        r
    }
}

impl From<mailspool_spool::SpoolError> for ApiError {
    fn from(e: mailspool_spool::SpoolError) -> Self {
        use mailspool_spool::SpoolError;
        match &e {
            SpoolError::NotFound(_) => ApiError::not_found(e.to_string()),
            SpoolError::Locked { .. } => {
                ApiError::new(StatusCode::CONFLICT, "locked", format!("{e}; try again"))
            }
            // The database is restarting or failing over: nothing was committed.
            SpoolError::Database(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "spool_unavailable",
                format!("{e}; nothing was queued, try again"),
            ),
            _ if e.is_full() => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "spool_full",
                e.to_string(),
            ),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<crate::admin::SelectError> for ApiError {
    fn from(e: crate::admin::SelectError) -> Self {
        use crate::admin::SelectError;
        match e {
            SelectError::Spool(e) => e.into(),
            SelectError::Ambiguous { ref messages, .. } => {
                let nodes: Vec<&str> = messages
                    .iter()
                    .flatten()
                    .map(|n| n.file_name.as_str())
                    .collect();
                ApiError::new(
                    StatusCode::CONFLICT,
                    "ambiguous_id",
                    format!("{e}: nodes {}", nodes.join(", ")),
                )
            }
            e => ApiError::not_found(e.to_string()),
        }
    }
}
