//! The one error type of the HTTP API: every error is JSON `{"error": "..."}`
//! with the status that fits.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// 429: a bound on what a peer may register was reached.
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429 with `Retry-After` (seconds): a bound on what one client may
    /// hold at once (active jobs, open streams) is full.
    #[error("{0}")]
    Saturated(String, u64),
    /// 408: the request's body did not arrive in time.
    #[error("{0}")]
    BodyTimeout(String),
    /// Logged with its detail; the client gets a generic message.
    #[error("internal error")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
    /// 501: a feature this orchestrator is not configured for.
    #[error("{0}")]
    NotImplemented(String),
    /// 502: a service behind the orchestrator (object storage) failed;
    /// the detail is logged and sent.
    #[error("{0}")]
    BadGateway(String),
    /// 401 (client) or 403 (worker) for a credential that was presented
    /// and is wrong; counted per peer address (`super::throttle`).
    #[error("{1}")]
    WrongToken(StatusCode, String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooMany(_) | Self::Saturated(..) => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::WrongToken(status, _) => *status,
        }
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(e: crate::storage::StorageError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<crate::objects::ObjectsError> for ApiError {
    fn from(e: crate::objects::ObjectsError) -> Self {
        use crate::objects::ObjectsError as E;
        let message = e.to_string();
        match e {
            E::TooLarge(_) => Self::PayloadTooLarge(message),
            E::NotFound => Self::NotFound("File not found".into()),
            E::Busy => Self::Saturated(message, 1),
            E::Body(_) => Self::BadRequest(message),
            E::Store(_) => {
                tracing::error!("{message}");
                Self::BadGateway(message)
            }
        }
    }
}

impl ApiError {
    /// The message the peer gets (an internal error's detail is logged,
    /// not sent).
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(detail) => {
                tracing::error!("internal error: {detail}");
                "Internal server error; see the orchestrator's log".to_string()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.public_message();
        let mut response = (
            self.status(),
            axum::Json(rxon::ErrorBody { error: message }),
        )
            .into_response();
        if let Self::Saturated(_, retry) = &self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(*retry),
            );
        }
        if matches!(self, Self::WrongToken(..)) {
            response
                .extensions_mut()
                .insert(super::throttle::WrongToken);
        }
        response
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError as E;
        let message = e.to_string();
        match e {
            E::InvalidJob(_) => Self::BadRequest(message),
            E::JobNotFound | E::UnknownWorker(_) => Self::NotFound(message),
            E::AlreadyEnded(_) | E::NotWaiting(_) => Self::Conflict(message),
            E::UnknownSignal(_) => Self::BadRequest(message),
            E::NotAssigned(_) | E::BadApprovalToken => Self::Forbidden(message),
            E::TooManyWorkers(_) => Self::TooMany(message),
            E::TooManyActiveJobs(_) => Self::Saturated(message, 1),
            E::Storage(_) => Self::Internal(message),
        }
    }
}
