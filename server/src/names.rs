//! Validated names of topics and subscriptions.
//!
//! The grammar, documented in the proto files and the README: 1 to 255
//! characters of ASCII letters, digits, `.`, `_` and `-`, starting with a
//! letter or digit. Names are checked once, where they enter the broker; code
//! that holds a [`TopicName`] or [`SubscriptionName`] can rely on it.

use std::fmt;

/// The longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} name is empty")]
    Empty {
        /// "topic" or "subscription".
        kind: &'static str,
    },
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("{kind} name is {len} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong {
        /// "topic" or "subscription".
        kind: &'static str,
        /// The name's length in bytes.
        len: usize,
    },
    /// The name holds a character outside the grammar.
    #[error(
        "{kind} name {name:?} is not valid: use ASCII letters, digits, '.', '_' and '-', starting with a letter or digit"
    )]
    BadCharacter {
        /// "topic" or "subscription".
        kind: &'static str,
        /// The rejected name.
        name: String,
    },
}

fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            len: name.len(),
        });
    }
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(NameError::BadCharacter {
            kind,
            name: name.to_owned(),
        })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            /// Checks `name` against the grammar.
            ///
            /// # Errors
            /// [`NameError`] when the name is empty, too long or holds a
            /// character outside the grammar.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate($kind, &name)?;
                Ok(Self(name))
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Names order, hash and compare exactly as their strings do, so maps
        // keyed by names can be searched with a `&str`.
        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

name_type!(
    /// The name of a topic, checked against the grammar.
    TopicName,
    "topic"
);
name_type!(
    /// The name of a subscription, checked against the grammar.
    SubscriptionName,
    "subscription"
);

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_of_the_grammar() {
        for name in [
            "order.placed",
            "a",
            "Stock_reserved-2",
            "0abc",
            &"x".repeat(255),
        ] {
            assert!(TopicName::new(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_names_outside_the_grammar() {
        assert_eq!(TopicName::new(""), Err(NameError::Empty { kind: "topic" }));
        assert!(matches!(
            SubscriptionName::new("x".repeat(256)),
            Err(NameError::TooLong { len: 256, .. })
        ));
        for name in [".hidden", "-x", "has space", "ünicode", "a/b", "_x"] {
            assert!(
                matches!(TopicName::new(name), Err(NameError::BadCharacter { .. })),
                "{name}"
            );
        }
    }

    #[test]
    fn error_message_names_the_rule() {
        let err = TopicName::new("a b").unwrap_err().to_string();
        assert!(err.contains("\"a b\""), "{err}");
        assert!(err.contains("letters, digits"), "{err}");
    }
}
