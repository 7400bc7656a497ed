//! HTTP errors: the status matching a gRPC code, and a JSON body
//! `{"code": "NOT_FOUND", "message": "..."}` on every error, 404 and 405
//! included.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tonic::{Code, Status};
use tracing::error;

use super::json::JsonError;

/// An error answer.
#[derive(Debug)]
pub(super) struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl HttpError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
        }
    }

    /// A path that names no route.
    pub(super) fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!(
                "no route {path}; the routes are POST /v1/topics/{{topic}}:publish and \
                 POST /v1/subscriptions/{{subscription}}:pull, :ack and :nack"
            ),
        )
    }

    /// A body over the broker's limit (413).
    pub(super) fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RESOURCE_EXHAUSTED",
            "the body is larger than the broker accepts (see --max-message-bytes)".to_owned(),
        )
    }

    /// A body the client stopped sending part way (400).
    pub(super) fn cut_off(err: &axum::Error) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            format!("the request's body could not be read: {err}"),
        )
    }
}

impl From<Status> for HttpError {
    fn from(status: Status) -> Self {
        let (http, name) = http_of(status.code());
        Self::new(http, name, status.message().to_owned())
    }
}

impl From<JsonError> for HttpError {
    fn from(err: JsonError) -> Self {
        match err {
            JsonError::Syntax { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", err.to_string())
            }
            JsonError::Unknown(_) | JsonError::Convert { .. } => {
                error!(error = %err, "the HTTP bus could not convert a message");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    err.to_string(),
                )
            }
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code, "message": self.message});
        let mut response = (self.status, axum::Json(body)).into_response();
        // A 401 names the scheme it wants (RFC 6750).
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The HTTP status and the name of each gRPC code.
fn http_of(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::Ok => (StatusCode::OK, "OK"),
        Code::Cancelled => (StatusCode::BAD_REQUEST, "CANCELLED"),
        Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
        Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        Code::FailedPrecondition => (StatusCode::PRECONDITION_FAILED, "FAILED_PRECONDITION"),
        Code::Aborted => (StatusCode::CONFLICT, "ABORTED"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "OUT_OF_RANGE"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
        Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "DATA_LOSS"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_grpc_code_has_the_contracts_http_status_and_its_name() {
        for (code, status, name) in [
            (Code::InvalidArgument, 400, "INVALID_ARGUMENT"),
            (Code::NotFound, 404, "NOT_FOUND"),
            (Code::AlreadyExists, 409, "ALREADY_EXISTS"),
            (Code::Aborted, 409, "ABORTED"),
            (Code::FailedPrecondition, 412, "FAILED_PRECONDITION"),
            (Code::Unauthenticated, 401, "UNAUTHENTICATED"),
            (Code::PermissionDenied, 403, "PERMISSION_DENIED"),
            (Code::ResourceExhausted, 429, "RESOURCE_EXHAUSTED"),
            (Code::Unavailable, 503, "UNAVAILABLE"),
            (Code::DeadlineExceeded, 504, "DEADLINE_EXCEEDED"),
            (Code::Internal, 500, "INTERNAL"),
        ] {
            let error = HttpError::from(Status::new(code, "why"));
            assert_eq!(error.status.as_u16(), status, "{code:?}");
            assert_eq!(error.code, name);
            assert_eq!(error.message, "why");
        }
    }
}
