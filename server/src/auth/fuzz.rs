//! Property tests: the auth file's parser takes any text without
//! panicking, refuses with a message, and a file it accepts decides any
//! name without panicking. 256 cases each; `PROPTEST_CASES=10000 cargo
//! test -p tidings-server --lib auth::fuzz` runs more.

use proptest::prelude::*;

use super::policy::{Policy, Unplaced};
use sha2::{Digest as _, Sha256};

use super::{Action, Resource, token_sha256};

/// The token whose hash the generated files often hold.
const TOKEN: &str = "t";

/// Values near what the file holds (names, hashes, globs, actions), and
/// any text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(token_sha256(TOKEN)),
        "[a-z*]{0,8}",
        "[0-9a-f]{62,66}",
        "CN=[a-z]{0,6}(,O=[A-Za-z]{0,4})?",
        "(publish|subscribe|admin|read|\\*)",
        "[a-z.*?\\[\\]{},!-]{0,12}",
        "\\PC{0,16}",
    ]
}

/// A TOML value of any type, mostly strings and lists of strings.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => value().prop_map(|v| format!("{v:?}")),
        4 => prop::collection::vec(value(), 0..4).prop_map(|vs| format!("{vs:?}")),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
    ]
}

/// Entries of an auth file: principals and grants with known and unknown
/// keys, and some lines that are not TOML.
fn auth_file() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("name"),
        Just("token_sha256"),
        Just("cert_subject"),
        Just("principal"),
        Just("actions"),
        Just("topics"),
        Just("subscriptions"),
        Just("no_such_key"),
    ];
    let table = prop_oneof![Just("[[principal]]"), Just("[[grant]]"), Just("[other]"),];
    let entry = (table, prop::collection::vec((key, toml_value()), 0..5))
        .prop_map(|(table, pairs)| {
            let lines: Vec<String> = pairs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{table}\n{}", lines.join("\n"))
        })
        .boxed();
    let piece = prop_oneof![8 => entry, 4 => granted(), 1 => "\\PC{0,20}".boxed()];
    prop::collection::vec(piece, 0..6).prop_map(|pieces| pieces.join("\n"))
}

/// A principal of the token [`TOKEN`] and a grant to it, of any actions
/// and patterns: files that load, so that decisions are made.
fn granted() -> BoxedStrategy<String> {
    let actions = prop::sample::subsequence(vec!["publish", "subscribe", "admin"], 1..=3);
    let patterns = || prop::collection::vec("[a-z.*?]{0,6}", 0..3);
    (actions, patterns(), patterns())
        .prop_map(|(actions, topics, subscriptions)| {
            format!(
                "[[principal]]\nname = \"p\"\ntoken_sha256 = \"{}\"\n\n[[grant]]\n\
                 principal = \"p\"\nactions = {actions:?}\ntopics = {topics:?}\n\
                 subscriptions = {subscriptions:?}",
                token_sha256(TOKEN)
            )
        })
        .boxed()
}

proptest! {
    #[test]
    fn any_auth_file_parses_or_is_explained(
        text in auth_file(),
        name in value(),
    ) {
        match Policy::parse(&text) {
            Err(Unplaced::Syntax(message)) => prop_assert!(!message.trim().is_empty()),
            Err(Unplaced::Entry { entry, message }) => {
                prop_assert!(!entry.trim().is_empty(), "{:?}", text);
                prop_assert!(!message.trim().is_empty(), "{:?}", text);
            }
            Ok(policy) => {
                let digest: [u8; 32] = Sha256::digest(TOKEN).into();
                let mut ids: Vec<_> = policy.by_token(&digest).into_iter().collect();
                ids.extend(policy.by_subject(&name));
                for id in ids {
                    let _ = policy.name(id);
                    for action in [Action::Publish, Action::Subscribe, Action::Admin] {
                        let _ = policy.allows(id, action, Resource::Topic(&name));
                        let _ = policy.allows(id, action, Resource::Subscription(&name));
                    }
                    let _ = policy.sees(id, Resource::Topic(&name));
                }
            }
        }
    }
}
