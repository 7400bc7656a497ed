//! Parsers of flag values: broker addresses, `NAME=VALUE` attributes,
//! start positions, times, ack deadlines, backoffs, retention ages, dedup
//! windows, sizes and timeouts.
//!
//! Pure functions returning a message clap shows next to the flag; no
//! input or output here.

use std::time::{Duration, SystemTime};

use tidings_client::StartPosition;

/// How a subscription that a command creates is set up; `subs create` and
/// `sub --topic` share these flags. Ignored when the subscription exists.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct NewSubscriptionArgs {
    /// Where the subscription begins: earliest (every retained message),
    /// latest (only messages published from now on), an offset such as 42,
    /// or an RFC 3339 time such as 2024-05-01T12:00:00Z. Used only when the
    /// command creates the subscription.
    #[arg(
        long,
        default_value = "earliest",
        value_parser = parse_start,
        value_name = "earliest|latest|OFFSET|TIME"
    )]
    pub(crate) start: StartPosition,

    /// How long a delivered message stays leased before it is delivered
    /// again: whole seconds, such as 30s or 2m (1s to 10m). Default: the
    /// broker's, 30s. Used only when the command creates the subscription.
    #[arg(long, value_parser = parse_ack_deadline, value_name = "DURATION")]
    pub(crate) ack_deadline: Option<Duration>,
}

/// Parses `--server`: a URL, or `host:port` to which `http://` is added.
pub(crate) fn parse_server(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("expected a broker address such as http://127.0.0.1:50051".into());
    }
    if value.contains("://") {
        Ok(value.to_owned())
    } else {
        Ok(format!("http://{value}"))
    }
}

/// Parses `--attr NAME=VALUE`.
pub(crate) fn parse_attribute(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some(("", _)) => {
            Err("the attribute name is empty; use NAME=VALUE, such as region=eu".into())
        }
        Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
        None => Err("expected NAME=VALUE, such as region=eu".into()),
    }
}

/// Parses `--push-header 'NAME: VALUE'`, as curl's `-H` takes it.
pub(crate) fn parse_header(value: &str) -> Result<(String, String), String> {
    match value.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err("expected 'NAME: VALUE', such as 'authorization: Bearer s3cret'".into()),
    }
}

/// Parses `--start`: `earliest`, `latest`, an offset, or an RFC 3339 time.
pub(crate) fn parse_start(value: &str) -> Result<StartPosition, String> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("earliest") {
        return Ok(StartPosition::Earliest);
    }
    if value.eq_ignore_ascii_case("latest") {
        return Ok(StartPosition::Latest);
    }
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map(StartPosition::Offset)
            .map_err(|err| format!("offset {value} is out of range ({err})"));
    }
    parse_time(value).map(StartPosition::Time).map_err(|_| {
        "expected earliest, latest, an offset such as 42, or an RFC 3339 time such as \
         2024-05-01T12:00:00Z"
            .into()
    })
}

/// Parses an RFC 3339 time: UTC (`Z`, or no zone) or with a `+HH:MM` /
/// `-HH:MM` offset.
pub(crate) fn parse_time(value: &str) -> Result<SystemTime, String> {
    let bad = || format!("{value:?} is not an RFC 3339 time such as 2024-05-01T12:00:00Z");
    let Some((local, offset)) = split_zone_offset(value) else {
        return humantime::parse_rfc3339_weak(value).map_err(|_| bad());
    };
    let local = humantime::parse_rfc3339_weak(local).map_err(|_| bad())?;
    // A local time at offset +01:00 is one hour ahead of UTC.
    let utc = if offset >= 0 {
        local.checked_sub(Duration::from_secs(offset.unsigned_abs()))
    } else {
        local.checked_add(Duration::from_secs(offset.unsigned_abs()))
    };
    utc.ok_or_else(bad)
}

/// Splits `…T10:00:00+02:00` into the local time and the offset in seconds.
fn split_zone_offset(value: &str) -> Option<(&str, i64)> {
    let split = value.len().checked_sub(6)?;
    let (local, zone) = (value.get(..split)?, value.get(split..)?);
    let sign = match zone.as_bytes() {
        [b'+', _, _, b':', _, _] => 1,
        [b'-', _, _, b':', _, _] => -1,
        _ => return None,
    };
    if !local.contains(['T', 't', ' ']) {
        return None;
    }
    let hours: i64 = zone.get(1..3)?.parse().ok()?;
    let minutes: i64 = zone.get(4..6)?.parse().ok()?;
    Some((local, sign * (hours * 3600 + minutes * 60)))
}

/// Parses an ack deadline: whole seconds, as `30`, `30s` or `1m`.
pub(crate) fn parse_ack_deadline(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let deadline = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value)
            .map_err(|_| format!("expected a duration such as 30s or 2m, not {value:?}"))?,
    };
    if deadline.subsec_nanos() != 0 || deadline.is_zero() {
        return Err("the ack deadline must be a whole number of seconds, at least 1s".into());
    }
    Ok(deadline)
}

/// Parses a backoff: a duration from 0 to 10 minutes, such as `500ms`,
/// `10s` or `2m` (a bare number is seconds).
pub(crate) fn parse_backoff(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let backoff = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value)
            .map_err(|_| format!("expected a duration such as 500ms, 10s or 2m, not {value:?}"))?,
    };
    if backoff > Duration::from_secs(600) {
        return Err("a backoff is at most 10m".into());
    }
    Ok(backoff)
}

/// Parses a retention age: `0` for no age limit, else a duration of at
/// least 1 second such as `90s`, `24h` or `7d` (a bare number is seconds).
/// Zero comes back as [`Duration::ZERO`].
pub(crate) fn parse_retention_age(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let age = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value).map_err(|_| {
            format!("expected a duration such as 24h or 7d (0 for no age limit), not {value:?}")
        })?,
    };
    if !age.is_zero() && age < Duration::from_secs(1) {
        return Err("a retention age is at least 1s; give 0 for no age limit".into());
    }
    Ok(age)
}

/// Parses a dedup window: a duration of at most 7 days such as `90s`,
/// `10m` or `1d` (a bare number is seconds); `0` turns deduplication off.
pub(crate) fn parse_dedup_window(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let window = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value).map_err(|_| {
            format!("expected a duration such as 10m or 1d (0 for no deduplication), not {value:?}")
        })?,
    };
    if window > Duration::from_secs(7 * 24 * 3600) {
        return Err("a dedup window is at most 7d".into());
    }
    Ok(window)
}

/// Parses a delivery delay: a duration of at most 30 days such as `30s`,
/// `10m` or `2h` (a bare number is seconds); `0` for none.
pub(crate) fn parse_delay(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value)
            .map_err(|_| format!("expected a duration such as 30s, 10m or 2h, not {value:?}"))?,
    };
    if delay > Duration::from_secs(30 * 24 * 3600) {
        return Err("a delay is at most 30d".into());
    }
    Ok(delay)
}

/// Parses a size in bytes: a number, or a number and a unit such as
/// `500MB`, `10GiB` or `64 KiB`.
pub(crate) fn parse_size(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("expected a size such as 1048576, 500MB or 10GiB, not {value:?}"))
}

/// Parses a timeout: a positive duration such as `500ms`, `5s` or `1m`
/// (a bare number is seconds).
pub(crate) fn parse_timeout(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let timeout = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value)
            .map_err(|_| format!("expected a duration such as 500ms, 5s or 1m, not {value:?}"))?,
    };
    if timeout.is_zero() {
        return Err("the timeout must be longer than zero".into());
    }
    Ok(timeout)
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_without_scheme_gets_http() {
        assert_eq!(
            parse_server("127.0.0.1:50051").as_deref(),
            Ok("http://127.0.0.1:50051")
        );
        assert_eq!(
            parse_server("https://broker:443").as_deref(),
            Ok("https://broker:443")
        );
        assert!(parse_server(" ").is_err());
    }

    #[test]
    fn attributes_need_a_name_and_an_equals_sign() {
        assert_eq!(
            parse_attribute("a=b=c"),
            Ok(("a".to_owned(), "b=c".to_owned()))
        );
        assert_eq!(parse_attribute("a="), Ok(("a".to_owned(), String::new())));
        assert!(parse_attribute("=b").is_err());
        assert!(parse_attribute("ab").is_err());
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!(parse_start("earliest"), Ok(StartPosition::Earliest));
        assert_eq!(parse_start("LATEST"), Ok(StartPosition::Latest));
        assert_eq!(parse_start("42"), Ok(StartPosition::Offset(42)));
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        assert_eq!(
            parse_start("2024-05-01T12:00:00Z"),
            Ok(StartPosition::Time(time))
        );
        assert!(parse_start("soon").is_err());
        assert!(parse_start("").is_err());
    }

    #[test]
    fn times_with_offsets_are_converted_to_utc() {
        let utc = parse_time("2024-05-01T12:00:00Z").expect("utc");
        assert_eq!(parse_time("2024-05-01T14:00:00+02:00"), Ok(utc));
        assert_eq!(parse_time("2024-05-01T07:30:00-04:30"), Ok(utc));
        assert!(parse_time("2024-05-01").is_err());
    }

    #[test]
    fn timeouts_are_positive_durations() {
        assert_eq!(parse_timeout("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn retention_ages_are_zero_or_at_least_a_second() {
        assert_eq!(parse_retention_age("0"), Ok(Duration::ZERO));
        assert_eq!(parse_retention_age("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_retention_age("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_retention_age("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_retention_age("90"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_retention_age("1500ms"),
            Ok(Duration::from_millis(1500))
        );
        let short = parse_retention_age("500ms").expect_err("below 1s");
        assert!(short.contains("at least 1s"), "{short}");
        let bad = parse_retention_age("a week").expect_err("not a duration");
        assert!(bad.contains("0 for no age limit"), "{bad}");
    }

    #[test]
    fn ack_deadlines_are_whole_seconds() {
        assert_eq!(parse_ack_deadline("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ack_deadline("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_ack_deadline("1500ms").is_err());
        assert!(parse_ack_deadline("0s").is_err());
        assert!(parse_ack_deadline("later").is_err());
    }
}
