//! Who sent a gRPC request: the bearer token of its `authorization`
//! metadata, or the subject of its client certificate (the
//! [`ClientCertificate`] in its extensions, with mutual TLS), looked up in
//! the [`Authorizer`]; and the one mapping of [`AuthError`] to a status.
//!
//! The HTTP bus copies its `Authorization` header and its client
//! certificate into the requests it hands the adapters, so both front
//! doors authenticate here. Nothing here decides a grant: the handlers ask the [`Caller`].

use tonic::{Request, Status};

use crate::auth::{AuthError, Authorizer, Caller, bearer_token};
use crate::tls::ClientCertificate;

/// The metadata key that carries `Bearer TOKEN`.
pub(crate) const AUTHORIZATION: &str = "authorization";

/// The caller of `request`. On an open broker, credentials are not read.
///
/// # Errors
/// UNAUTHENTICATED when the broker has an auth file and the request
/// carries no credentials, malformed ones, or ones that name no principal.
pub(crate) fn caller<T>(auth: &Authorizer, request: &Request<T>) -> Result<Caller, Status> {
    if auth.path().is_none() {
        return auth.caller(None, None).map_err(Status::from);
    }
    let token = match request.metadata().get(AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| Status::unauthenticated("authorization must be `Bearer TOKEN`"))?;
            Some(bearer_token(value)?)
        }
    };
    let subject = request
        .extensions()
        .get::<ClientCertificate>()
        .map(ClientCertificate::subject);
    Ok(auth.caller(token, subject)?)
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Unauthenticated(message) => Status::unauthenticated(message),
            denied @ AuthError::Denied { .. } => Status::permission_denied(denied.to_string()),
        }
    }
}
