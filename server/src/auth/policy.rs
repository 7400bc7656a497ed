//! The auth file, read into a [`Policy`]: its principals, and for each the
//! name patterns it holds each action on.
//!
//! Reading checks everything a mistake could hide in (unknown keys, bad
//! hashes, unknown actions, grants to principals nobody defined, bad
//! patterns) and names the file and the entry in its error. Patterns are
//! compiled here, once per load, so a decision is one match of a compiled
//! set against a name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

use super::{Action, Resource};

/// The principal name that stands for every authenticated principal in a
/// grant.
const ANY_PRINCIPAL: &str = "*";

/// Why the auth file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file could not be read.
    #[error("cannot read the auth file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML of the auth file's shape (an unknown key or
    /// action, a value of the wrong type): what the parser says, with the
    /// line.
    #[error("the auth file {} is not valid: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An entry is wrong.
    #[error("in the auth file {}, {entry}: {message}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry, such as `principal "orders"` or `grant 2`.
        entry: String,
        /// What is wrong, and what to do.
        message: String,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    principal: Vec<PrincipalEntry>,
    #[serde(default)]
    grant: Vec<GrantEntry>,
}

/// A `[[principal]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    name: String,
    token_sha256: Option<String>,
    cert_subject: Option<String>,
}

/// A `[[grant]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantEntry {
    principal: String,
    actions: Vec<ActionEntry>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    subscriptions: Vec<String>,
}

/// An action's name in a grant.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ActionEntry {
    Publish,
    Subscribe,
    Admin,
}

impl From<ActionEntry> for Action {
    fn from(entry: ActionEntry) -> Self {
        match entry {
            ActionEntry::Publish => Self::Publish,
            ActionEntry::Subscribe => Self::Subscribe,
            ActionEntry::Admin => Self::Admin,
        }
    }
}

/// A principal of a [`Policy`], by its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PrincipalId(usize);

/// Everything the auth file says, ready for decisions.
#[derive(Debug)]
pub(super) struct Policy {
    principals: Vec<Principal>,
    by_subject: HashMap<String, PrincipalId>,
}

#[derive(Debug)]
struct Principal {
    name: String,
    token: Option<[u8; 32]>,
    /// Indexed by [`action_index`].
    rights: [Names; 3],
    /// Any grant at all: what the principal sees.
    seen: Names,
}

/// The topics and subscriptions one right applies to.
#[derive(Debug)]
struct Names {
    topics: GlobSet,
    subscriptions: GlobSet,
}

impl Names {
    fn matches(&self, resource: Resource<'_>) -> bool {
        match resource {
            Resource::Topic(name) => self.topics.is_match(name),
            Resource::Subscription(name) => self.subscriptions.is_match(name),
        }
    }
}

fn action_index(action: Action) -> usize {
    match action {
        Action::Publish => 0,
        Action::Subscribe => 1,
        Action::Admin => 2,
    }
}

impl Policy {
    /// Reads and checks the file at `path`.
    pub(super) fn read(path: &Path) -> Result<Self, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|err| err.in_file(path))
    }

    /// Checks `text`; errors name no file yet.
    pub(super) fn parse(text: &str) -> Result<Self, Unplaced> {
        let shape: FileShape =
            toml::from_str(text).map_err(|err| Unplaced::Syntax(err.to_string()))?;
        let mut builders = Vec::with_capacity(shape.principal.len());
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut by_subject = HashMap::new();
        for entry in &shape.principal {
            let place = || format!("principal \"{}\"", entry.name);
            if entry.name.is_empty() || entry.name == ANY_PRINCIPAL {
                return Err(Unplaced::entry(
                    place(),
                    "a principal needs a name other than \"\" and \"*\"",
                ));
            }
            if by_name.insert(&entry.name, builders.len()).is_some() {
                return Err(Unplaced::entry(place(), "the name is defined twice"));
            }
            let token = entry
                .token_sha256
                .as_deref()
                .map(parse_digest)
                .transpose()
                .map_err(|message| Unplaced::entry(place(), message))?;
            if token.is_none() && entry.cert_subject.is_none() {
                return Err(Unplaced::entry(
                    place(),
                    "give token_sha256 or cert_subject (or both): \
                     without either nobody can be this principal",
                ));
            }
            if let Some(subject) = &entry.cert_subject
                && by_subject
                    .insert(subject.clone(), PrincipalId(builders.len()))
                    .is_some()
            {
                return Err(Unplaced::entry(
                    place(),
                    format!("cert_subject \"{subject}\" belongs to another principal too"),
                ));
            }
            builders.push(PrincipalBuilder::new(&entry.name, token));
        }
        check_distinct_tokens(&builders)?;
        for (index, grant) in shape.grant.iter().enumerate() {
            let place = format!("grant {} (principal \"{}\")", index + 1, grant.principal);
            let targets: Vec<usize> = if grant.principal == ANY_PRINCIPAL {
                (0..builders.len()).collect()
            } else {
                let known = by_name.get(grant.principal.as_str()).copied();
                vec![known.ok_or_else(|| {
                    Unplaced::entry(
                        place.clone(),
                        "no [[principal]] has this name; define it, or use \"*\" for every \
                         principal",
                    )
                })?]
            };
            let globs = GrantGlobs::compile(grant).map_err(|msg| Unplaced::entry(place, msg))?;
            for target in targets {
                builders[target].add(grant, &globs);
            }
        }
        let principals = builders
            .into_iter()
            .map(PrincipalBuilder::build)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            principals,
            by_subject,
        })
    }

    /// The principal whose token hash is `digest`. Every principal's hash
    /// is compared, each in constant time.
    pub(super) fn by_token(&self, digest: &[u8; 32]) -> Option<PrincipalId> {
        let mut found = None;
        for (index, principal) in self.principals.iter().enumerate() {
            if let Some(token) = &principal.token
                && bool::from(token.ct_eq(digest))
            {
                found = Some(PrincipalId(index));
            }
        }
        found
    }

    /// The principal with this certificate subject.
    pub(super) fn by_subject(&self, subject: &str) -> Option<PrincipalId> {
        self.by_subject.get(subject).copied()
    }

    /// The principal's name.
    pub(super) fn name(&self, id: PrincipalId) -> &str {
        &self.principals[id.0].name
    }

    /// Whether `id` holds `action` on `resource`.
    pub(super) fn allows(&self, id: PrincipalId, action: Action, resource: Resource<'_>) -> bool {
        self.principals[id.0].rights[action_index(action)].matches(resource)
    }

    /// Whether `id` holds any grant on `resource`.
    pub(super) fn sees(&self, id: PrincipalId, resource: Resource<'_>) -> bool {
        self.principals[id.0].seen.matches(resource)
    }
}

/// Two principals with one token would be one principal to the broker.
fn check_distinct_tokens(builders: &[PrincipalBuilder]) -> Result<(), Unplaced> {
    let mut seen: HashMap<[u8; 32], &str> = HashMap::new();
    for builder in builders {
        if let Some(token) = builder.token
            && let Some(other) = seen.insert(token, &builder.name)
        {
            return Err(Unplaced::entry(
                format!("principal \"{}\"", builder.name),
                format!(
                    "its token_sha256 is also principal \"{other}\"'s; give each its own token"
                ),
            ));
        }
    }
    Ok(())
}

/// Reads 64 hex digits.
fn parse_digest(hex_text: &str) -> Result<[u8; 32], String> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut digest).map_err(|err| {
        format!(
            "token_sha256 must be 64 hex digits, the SHA-256 of the token as \
             `tidings-server hash-token` prints it ({err})"
        )
    })?;
    Ok(digest)
}

/// A grant's patterns, compiled once for all its principals.
struct GrantGlobs {
    topics: Vec<Glob>,
    subscriptions: Vec<Glob>,
}

impl GrantGlobs {
    fn compile(grant: &GrantEntry) -> Result<Self, String> {
        if grant.actions.is_empty() {
            return Err("actions is empty; give publish, subscribe or admin".to_owned());
        }
        if grant.topics.is_empty() && grant.subscriptions.is_empty() {
            return Err("it names no topics and no subscriptions, so it grants nothing".to_owned());
        }
        let compile = |patterns: &[String], kind: &str| {
            patterns
                .iter()
                .map(|pattern| {
                    Glob::new(pattern)
                        .map_err(|err| format!("{kind} pattern \"{pattern}\" is not valid: {err}"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            topics: compile(&grant.topics, "topics")?,
            subscriptions: compile(&grant.subscriptions, "subscriptions")?,
        })
    }
}

/// A principal's patterns, gathered from the grants before compiling.
struct PrincipalBuilder {
    name: String,
    token: Option<[u8; 32]>,
    rights: [NamesBuilder; 3],
    seen: NamesBuilder,
}

struct NamesBuilder {
    topics: GlobSetBuilder,
    subscriptions: GlobSetBuilder,
}

impl NamesBuilder {
    fn new() -> Self {
        Self {
            topics: GlobSetBuilder::new(),
            subscriptions: GlobSetBuilder::new(),
        }
    }

    fn add(&mut self, globs: &GrantGlobs) {
        for glob in &globs.topics {
            self.topics.add(glob.clone());
        }
        for glob in &globs.subscriptions {
            self.subscriptions.add(glob.clone());
        }
    }

    fn build(&self, principal: &str) -> Result<Names, Unplaced> {
        let fail = |err: globset::Error| {
            Unplaced::entry(
                format!("principal \"{principal}\""),
                format!("its patterns do not compile: {err}"),
            )
        };
        Ok(Names {
            topics: self.topics.build().map_err(fail)?,
            subscriptions: self.subscriptions.build().map_err(fail)?,
        })
    }
}

impl PrincipalBuilder {
    fn new(name: &str, token: Option<[u8; 32]>) -> Self {
        Self {
            name: name.to_owned(),
            token,
            rights: [
                NamesBuilder::new(),
                NamesBuilder::new(),
                NamesBuilder::new(),
            ],
            seen: NamesBuilder::new(),
        }
    }

    fn add(&mut self, grant: &GrantEntry, globs: &GrantGlobs) {
        for action in &grant.actions {
            self.rights[action_index(Action::from(*action))].add(globs);
        }
        self.seen.add(globs);
    }

    fn build(self) -> Result<Principal, Unplaced> {
        let [publish, subscribe, admin] = &self.rights;
        Ok(Principal {
            rights: [
                publish.build(&self.name)?,
                subscribe.build(&self.name)?,
                admin.build(&self.name)?,
            ],
            seen: self.seen.build(&self.name)?,
            name: self.name,
            token: self.token,
        })
    }
}

/// An error of the file's text, before it is known which file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unplaced {
    Syntax(String),
    Entry { entry: String, message: String },
}

impl Unplaced {
    fn entry(entry: String, message: impl Into<String>) -> Self {
        Self::Entry {
            entry,
            message: message.into(),
        }
    }

    fn in_file(self, path: &Path) -> AuthFileError {
        let path = path.to_owned();
        match self {
            Self::Syntax(message) => AuthFileError::Syntax { path, message },
            Self::Entry { entry, message } => AuthFileError::Entry {
                path,
                entry,
                message,
            },
        }
    }
}
