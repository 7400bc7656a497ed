//! Property tests: every flag value parser takes any text without
//! panicking, and refuses with a message. 256 cases each;
//! `PROPTEST_CASES=10000 cargo test -p tidings-client --bin tidings fuzz`
//! runs more.

use proptest::prelude::*;

use super::*;

/// Text near what the parsers read (times, durations, sizes, pairs), and
/// any text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ ]?[0-9]{0,22}(\\.[0-9]{0,3})?[ ]?(ns|us|ms|s|m|h|d|w|y|B|KB|KiB|MB|MiB|GiB|TiB|EiB)?[ ]?",
        "[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}([Tt ][0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2}(\\.[0-9]{0,12})?)?)?(Z|z|[+-][0-9]{2}:[0-9]{2})?",
        "(earliest|latest|EARLIEST|[0-9]{1,25})",
        "[a-z]{0,6}[=:][ ]?\\PC{0,8}",
        "[a-z]{0,5}://[a-z0-9.:]{0,12}",
        "\\PC{0,30}",
    ]
}

/// Refused with a message a person can read.
fn explained<T>(parsed: Result<T, String>) -> Result<(), TestCaseError> {
    if let Err(message) = parsed {
        prop_assert!(!message.trim().is_empty());
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_flag_value_parses_or_is_explained(text in value()) {
        explained(parse_server(&text))?;
        explained(parse_attribute(&text))?;
        explained(parse_header(&text))?;
        explained(parse_start(&text))?;
        explained(parse_time(&text))?;
        explained(parse_ack_deadline(&text))?;
        explained(parse_backoff(&text))?;
        explained(parse_retention_age(&text))?;
        explained(parse_dedup_window(&text))?;
        explained(parse_delay(&text))?;
        explained(parse_size(&text))?;
        explained(parse_timeout(&text))?;
    }
}
