//! Property tests: the flag value parsers and the config file take any
//! text without panicking; what they refuse gets a message. 256 cases
//! each; `PROPTEST_CASES=10000 cargo test -p tidings-server --lib
//! config::fuzz` runs more.

use proptest::prelude::*;

use super::*;

/// Text near what the parsers read (numbers, units, durations), and any
/// text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ ]?[0-9]{0,22}(\\.[0-9]{0,3})?[ ]?(ns|us|ms|s|m|h|d|w|y|B|KB|KiB|MB|MiB|GB|GiB|TB|TiB|PiB|EiB|always)?[ ]?",
        "([0-9]{1,20}[a-zA-Z]{1,5} ?){1,4}",
        "(info|debug|warn|[a-z_]{1,8})?(=[a-z]{0,6})?(,[a-z_:=\\[\\]{}\"]{0,10}){0,3}",
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

/// Lines of a config file: known keys and others, with values of any
/// TOML type, and some lines that are not TOML.
fn config_file() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("data_dir"),
        Just("sync_interval"),
        Just("max_message_bytes"),
        Just("retention_max_age"),
        Just("shutdown_timeout"),
        Just("max_connections"),
        Just("max_topics"),
        Just("log"),
        Just("listen"),
        Just("auto_create_topics"),
        Just("config"),
        Just("no_such_key"),
    ];
    let toml_value = prop_oneof![
        value().prop_map(|v| format!("{v:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("[1, \"a\"]".to_owned()),
        Just("{ a = 1 }".to_owned()),
    ];
    let line = prop_oneof![
        8 => (key, toml_value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "\\PC{0,20}",
        1 => "\\[[a-z]{0,6}\\]",
    ];
    prop::collection::vec(line, 0..6).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #[test]
    fn flag_values_parse_or_are_explained(text in value()) {
        explained(parse_sync_interval(&text))?;
        explained(parse_duration(&text))?;
        explained(parse_retention_max_age(&text))?;
        explained(parse_max_message_bytes(&text))?;
        explained(parse_limit(&text))?;
        explained(parse_log_directive(&text))?;
    }

    #[test]
    fn any_config_file_loads_or_is_explained(text in config_file()) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("tidings.toml");
        std::fs::write(&path, &text).expect("writes");
        let args = [std::ffi::OsString::from("tidings-server"), "--config".into(), path.into()];
        if let Err(err) = Config::load_from(args) {
            prop_assert!(!err.to_string().trim().is_empty(), "{:?}", text);
        }
    }
}
