//! Who may do what: principals and grants from the auth file
//! (`--auth-file`), and the decisions made from them.
//!
//! An [`Authorizer`] is either open (no auth file: everything is allowed,
//! for local use) or holds the file's `Policy` (module `policy`), swapped whole
//! when the file is reloaded. A request first finds its [`Caller`] (a
//! bearer token, compared by its SHA-256 in constant time, or an mTLS
//! certificate subject), then asks the caller one decision per action:
//! [`Caller::publish`], [`Caller::subscribe`], [`Caller::admin`], and
//! [`Caller::sees`] for what listings show. A decision is a pattern match
//! on the name in memory: no file is read on the way of a request.
//!
//! Decisions are made on the names a request gives, before anything is
//! looked up, so a denied caller learns nothing of what exists. This
//! module knows nothing of gRPC or HTTP: the adapters read the token from
//! their requests and map [`AuthError`] to their statuses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

#[cfg(test)]
mod fuzz;
mod policy;
#[cfg(test)]
mod tests;

pub use policy::AuthFileError;
use policy::{Policy, PrincipalId};

/// What a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publish to topics (Publish, Commit's publishes, Call).
    Publish,
    /// Consume subscriptions (Subscribe, Pull, Ack, Nack, ModifyAckDeadline,
    /// Reject, Seek, Commit's acks) and read topics (ReadTopic).
    Subscribe,
    /// Manage topics and subscriptions (AdminService).
    Admin,
}

impl Action {
    /// The action's name in the auth file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Admin => "admin",
        }
    }
}

/// A name a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A topic.
    Topic(&'a str),
    /// A subscription.
    Subscription(&'a str),
}

impl std::fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Topic(name) => write!(f, "topic \"{name}\""),
            Self::Subscription(name) => write!(f, "subscription \"{name}\""),
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or credentials that name no principal.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The principal holds no grant for this. The message is the same
    /// whether or not the resource exists.
    #[error("principal \"{principal}\" has no {action} grant on {resource}")]
    Denied {
        /// The caller's principal.
        principal: String,
        /// The action's name.
        action: &'static str,
        /// The resource, as `topic "name"` or `subscription "name"`.
        resource: String,
    },
}

/// The decisions of the broker: open, or from an auth file that can be
/// reloaded. Clones share one policy, so a reload reaches every holder.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    file: Option<Arc<AuthFile>>,
}

/// An auth file and the policy last loaded from it.
#[derive(Debug)]
struct AuthFile {
    path: PathBuf,
    policy: ArcSwap<Policy>,
}

impl Authorizer {
    /// Allows everything to everyone, with or without credentials.
    pub fn open() -> Self {
        Self::default()
    }

    /// Loads the auth file at `path`: with it, everything not granted is
    /// denied.
    ///
    /// # Errors
    /// [`AuthFileError`] naming the file, and the key or entry at fault.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, AuthFileError> {
        let path = path.into();
        let policy = Policy::read(&path)?;
        Ok(Self {
            file: Some(Arc::new(AuthFile {
                path,
                policy: ArcSwap::from_pointee(policy),
            })),
        })
    }

    /// [`Authorizer::load`] with a file, [`Authorizer::open`] without.
    ///
    /// # Errors
    /// As [`Authorizer::load`].
    pub fn from_file(path: Option<&Path>) -> Result<Self, AuthFileError> {
        path.map_or_else(|| Ok(Self::open()), Self::load)
    }

    /// The auth file, when there is one.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_deref().map(|file| file.path.as_path())
    }

    /// Reads the auth file again and, when it is valid, decides every
    /// request from now on by it; requests under way and open streams are
    /// not touched. An open authorizer has nothing to reload.
    ///
    /// # Errors
    /// [`AuthFileError`] when the file cannot be read or is not valid:
    /// the policy loaded before stays in force.
    pub fn reload(&self) -> Result<(), AuthFileError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let policy = Policy::read(&file.path)?;
        file.policy.store(Arc::new(policy));
        Ok(())
    }

    /// Who is calling: the principal whose token hash is the SHA-256 of
    /// `token`, or else whose certificate subject is `cert_subject`. An
    /// open authorizer needs neither.
    ///
    /// # Errors
    /// [`AuthError::Unauthenticated`] with a file, when neither names a
    /// principal.
    pub fn caller(
        &self,
        token: Option<&str>,
        cert_subject: Option<&str>,
    ) -> Result<Caller, AuthError> {
        let Some(file) = &self.file else {
            return Ok(Caller { identity: None });
        };
        let policy = file.policy.load_full();
        let principal = match (token, cert_subject) {
            (Some(token), _) => {
                policy
                    .by_token(&token_digest(token))
                    .ok_or(AuthError::Unauthenticated(
                        "the bearer token is not valid for this broker",
                    ))?
            }
            (None, Some(subject)) => {
                policy
                    .by_subject(subject)
                    .ok_or(AuthError::Unauthenticated(
                        "the client certificate names no principal",
                    ))?
            }
            (None, None) => {
                return Err(AuthError::Unauthenticated(
                    "this broker requires a token: send `authorization: Bearer TOKEN`",
                ));
            }
        };
        Ok(Caller {
            identity: Some((policy, principal)),
        })
    }
}

/// The caller of one request, and the policy in force when it arrived.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None` for an open broker.
    identity: Option<(Arc<Policy>, PrincipalId)>,
}

impl Caller {
    /// The principal's name; `None` on an open broker.
    pub fn principal(&self) -> Option<&str> {
        self.identity.as_ref().map(|(policy, id)| policy.name(*id))
    }

    /// May the caller publish to `topic`?
    ///
    /// # Errors
    /// [`AuthError::Denied`] when it holds no `publish` grant on it.
    pub fn publish(&self, topic: &str) -> Result<(), AuthError> {
        self.decide(Action::Publish, Resource::Topic(topic))
    }

    /// May the caller consume `resource` (a subscription), or read it (a
    /// topic)?
    ///
    /// # Errors
    /// [`AuthError::Denied`] when it holds no `subscribe` grant on it.
    pub fn subscribe(&self, resource: Resource<'_>) -> Result<(), AuthError> {
        self.decide(Action::Subscribe, resource)
    }

    /// May the caller manage `resource`?
    ///
    /// # Errors
    /// [`AuthError::Denied`] when it holds no `admin` grant on it.
    pub fn admin(&self, resource: Resource<'_>) -> Result<(), AuthError> {
        self.decide(Action::Admin, resource)
    }

    /// May the caller do either of `actions` on `resource`?
    ///
    /// # Errors
    /// [`AuthError::Denied`] naming both, when it holds neither grant.
    pub fn either(&self, actions: [Action; 2], resource: Resource<'_>) -> Result<(), AuthError> {
        let [first, second] = actions;
        match self.decide(first, resource) {
            Ok(()) => Ok(()),
            Err(_) => self.decide(second, resource).map_err(|err| match err {
                AuthError::Denied {
                    principal,
                    resource,
                    ..
                } => AuthError::Denied {
                    principal,
                    action: either_name(first, second),
                    resource,
                },
                other => other,
            }),
        }
    }

    /// May the caller see `resource` (in listings and Get calls): does it
    /// hold any grant on it?
    pub fn sees(&self, resource: Resource<'_>) -> bool {
        match &self.identity {
            None => true,
            Some((policy, id)) => policy.sees(*id, resource),
        }
    }

    /// [`Caller::sees`] as a decision.
    ///
    /// # Errors
    /// [`AuthError::Denied`] when it holds no grant on `resource`.
    pub fn see(&self, resource: Resource<'_>) -> Result<(), AuthError> {
        if self.sees(resource) {
            Ok(())
        } else {
            Err(self.denied("any", resource))
        }
    }

    /// Whether everything is allowed (an open broker): listings need no
    /// filtering.
    pub fn is_open(&self) -> bool {
        self.identity.is_none()
    }

    fn decide(&self, action: Action, resource: Resource<'_>) -> Result<(), AuthError> {
        match &self.identity {
            None => Ok(()),
            Some((policy, id)) if policy.allows(*id, action, resource) => Ok(()),
            Some(_) => Err(self.denied(action.as_str(), resource)),
        }
    }

    fn denied(&self, action: &'static str, resource: Resource<'_>) -> AuthError {
        AuthError::Denied {
            principal: self.principal().unwrap_or_default().to_owned(),
            action,
            resource: resource.to_string(),
        }
    }
}

/// The name of "one action or the other" in a denial.
fn either_name(first: Action, second: Action) -> &'static str {
    match (first, second) {
        (Action::Publish, Action::Admin) | (Action::Admin, Action::Publish) => "publish or admin",
        (Action::Subscribe, Action::Admin) | (Action::Admin, Action::Subscribe) => {
            "subscribe or admin"
        }
        _ => "publish or subscribe",
    }
}

/// The SHA-256 of a token.
fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The SHA-256 of `token` in hex: what the auth file's `token_sha256`
/// holds.
pub fn token_sha256(token: &str) -> String {
    hex::encode(token_digest(token))
}

/// A new random token (32 bytes from the system's secure generator, in
/// hex) and its [`token_sha256`].
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let hash = token_sha256(&token);
    (token, hash)
}

/// The token of an `authorization` header or metadata value: `Bearer
/// TOKEN` (the scheme in any case).
///
/// # Errors
/// [`AuthError::Unauthenticated`] for another scheme or an empty token.
pub fn bearer_token(value: &str) -> Result<&str, AuthError> {
    let malformed = AuthError::Unauthenticated("authorization must be `Bearer TOKEN`");
    let (scheme, token) = value.trim().split_once(' ').ok_or(malformed.clone())?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed);
    }
    Ok(token)
}
