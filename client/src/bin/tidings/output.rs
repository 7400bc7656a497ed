//! How results look: JSON values of topics, subscriptions and messages,
//! the formats `sub` and `peek` print messages in, aligned tables and
//! `field: value` lines for people, and writing to standard output.
//!
//! Knows nothing of the broker connection; commands hand it finished
//! results.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};
use tidings_client::{Delivery, Retention, StorageClass, StoredMessage, Subscription, Topic};

/// Writes `text` to standard output and flushes it, so that a reader on
/// the other end of a pipe sees it at once.
pub(crate) fn write(text: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text)?;
    stdout.flush()
}

/// Writes `line` and a newline to standard output.
pub(crate) fn line(line: &str) -> std::io::Result<()> {
    write(format!("{line}\n").as_bytes())
}

/// Writes `value` as pretty-printed JSON and a newline.
pub(crate) fn json(value: &Value) -> std::io::Result<()> {
    line(&format!("{value:#}"))
}

/// An RFC 3339 time in UTC, with as many fractional digits as it has.
pub(crate) fn time_json(time: Option<SystemTime>) -> Value {
    time.map_or(Value::Null, |time| {
        Value::String(humantime::format_rfc3339(time).to_string())
    })
}

/// A time for people: RFC 3339 to the second, or `-` when unknown.
fn time_text(time: Option<SystemTime>) -> String {
    time.map_or_else(
        || "-".to_owned(),
        |time| humantime::format_rfc3339_seconds(time).to_string(),
    )
}

/// A duration for people, such as `30s` or `1m 30s`.
fn duration_text(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// An age for people, in the units `--retention` takes, largest first:
/// `7d`, `1d 12h`, `1m 30s`, `1s 500ms`.
fn age_text(age: Duration) -> String {
    let mut seconds = age.as_secs();
    let mut parts = Vec::new();
    for (unit_seconds, unit) in [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")] {
        let count = seconds / unit_seconds;
        seconds %= unit_seconds;
        if count > 0 {
            parts.push(format!("{count}{unit}"));
        }
    }
    let millis = age.subsec_millis();
    if millis > 0 {
        parts.push(format!("{millis}ms"));
    }
    if parts.is_empty() {
        // Below a millisecond; the broker never reports such an age.
        return duration_text(age);
    }
    parts.join(" ")
}

/// A retention policy as JSON: a limit that is not set is null.
fn retention_json(retention: &Retention) -> Value {
    json!({
        "max_age_seconds": retention.max_age.map(|age| age.as_secs_f64()),
        "max_messages": retention.max_messages,
        "max_bytes": retention.max_bytes,
        "discard_acked": retention.discard_acked,
    })
}

/// A retention policy for people, every part named:
/// `max age 7d, max messages unlimited, max bytes unlimited, discard acked no`.
fn retention_text(retention: &Retention) -> String {
    format!(
        "max age {}, max messages {}, max bytes {}, discard acked {}",
        retention.max_age.map_or("unlimited".to_owned(), age_text),
        retention
            .max_messages
            .map_or("unlimited".to_owned(), |n| n.to_string()),
        retention
            .max_bytes
            .map_or("unlimited".to_owned(), bytes_text),
        if retention.discard_acked { "yes" } else { "no" },
    )
}

/// A size for people, in binary units: `10.0 GiB`, `512 B`.
fn bytes_text(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// A retention policy in a table cell: its limits, short
/// (`7d, 1000 messages, until acked`), or `keep all`.
fn retention_cell(retention: &Retention) -> String {
    let mut parts = Vec::new();
    if let Some(age) = retention.max_age {
        parts.push(age_text(age));
    }
    if let Some(max_messages) = retention.max_messages {
        parts.push(format!("{max_messages} messages"));
    }
    if let Some(max_bytes) = retention.max_bytes {
        parts.push(bytes_text(max_bytes));
    }
    if retention.discard_acked {
        parts.push("until acked".to_owned());
    }
    if parts.is_empty() {
        return "keep all".to_owned();
    }
    parts.join(", ")
}

/// A topic as JSON.
pub(crate) fn topic_json(topic: &Topic) -> Value {
    json!({
        "name": topic.name,
        "first_offset": topic.first_offset,
        "next_offset": topic.next_offset,
        "retained_messages": topic.retained_messages,
        "retained_bytes": topic.retained_bytes,
        "retention": retention_json(&topic.retention),
        "dedup_window_seconds": topic.dedup_window.as_secs_f64(),
        "storage": topic.storage.as_str(),
        "create_time": time_json(topic.create_time),
    })
}

/// A subscription with its live figures as JSON.
pub(crate) fn subscription_json(sub: &Subscription) -> Value {
    json!({
        "name": sub.name,
        "topic": sub.topic,
        "ack_deadline_seconds": sub.ack_deadline.as_secs(),
        "backlog": sub.backlog,
        "in_flight": sub.in_flight,
        "ack_floor": sub.ack_floor,
        "open_streams": sub.open_streams,
        "create_time": time_json(sub.create_time),
        "filter": sub.filter,
        "enable_message_ordering": sub.enable_message_ordering,
        "dead_letter_policy": sub.dead_letter_policy.as_ref().map(|policy| json!({
            "dead_letter_topic": policy.topic,
            "max_delivery_attempts": policy.max_delivery_attempts,
        })),
        "dead_lettered": sub.dead_lettered,
        "rejected": sub.rejected,
        "delivery_delay_seconds": sub.delivery_delay.as_secs_f64(),
        "delayed": sub.delayed,
        "retry_policy": sub.retry_policy.map(|policy| json!({
            "minimum_backoff_seconds": policy.minimum_backoff.as_secs_f64(),
            "maximum_backoff_seconds": policy.maximum_backoff.as_secs_f64(),
        })),
        "push_config": sub.push_config.as_ref().map(|push| json!({
            "endpoint": push.endpoint,
            "headers": push.headers,
            "max_outstanding": push.max_outstanding,
        })),
    })
}

/// How `sub` and `peek` print a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// The payload's bytes as they are, then a newline.
    Raw,
    /// Each message as a pretty-printed JSON object.
    Json,
    /// Each message as a JSON object on one line: offset, key, attributes,
    /// publish_time (RFC 3339), delivery_attempt (sub only), and payload
    /// (UTF-8) or payload_base64.
    Jsonl,
}

impl Format {
    /// The format asked for, else raw, or jsonl with `--json`.
    pub(crate) fn chosen(format: Option<Self>, json: bool) -> Self {
        format.unwrap_or(if json { Self::Jsonl } else { Self::Raw })
    }
}

/// A message to print: a delivery of `sub`, or a stored message of `peek`
/// (which was delivered to nobody, so it has no attempt).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shown<'a> {
    offset: u64,
    payload: &'a [u8],
    key: &'a str,
    attributes: &'a HashMap<String, String>,
    id: &'a str,
    publish_time: Option<SystemTime>,
    delivery_attempt: Option<u32>,
}

impl<'a> From<&'a Delivery> for Shown<'a> {
    fn from(delivery: &'a Delivery) -> Self {
        Self {
            offset: delivery.offset(),
            payload: delivery.payload(),
            key: delivery.key(),
            attributes: delivery.attributes(),
            id: delivery.id(),
            publish_time: delivery.publish_time(),
            delivery_attempt: Some(delivery.delivery_attempt()),
        }
    }
}

impl<'a> From<&'a StoredMessage> for Shown<'a> {
    fn from(message: &'a StoredMessage) -> Self {
        Self {
            offset: message.offset,
            payload: &message.payload,
            key: &message.key,
            attributes: &message.attributes,
            id: &message.id,
            publish_time: message.publish_time,
            delivery_attempt: None,
        }
    }
}

/// A message as JSON: the payload as a string when it is UTF-8, else
/// base64 under `payload_base64`; `delivery_attempt` only for deliveries,
/// `id` only for messages published with one.
pub(crate) fn message_json(message: Shown<'_>) -> Value {
    let mut fields = serde_json::Map::new();
    fields.insert("offset".into(), message.offset.into());
    fields.insert("key".into(), message.key.into());
    fields.insert("attributes".into(), json!(message.attributes));
    if !message.id.is_empty() {
        fields.insert("id".into(), message.id.into());
    }
    fields.insert("publish_time".into(), time_json(message.publish_time));
    if let Some(attempt) = message.delivery_attempt {
        fields.insert("delivery_attempt".into(), attempt.into());
    }
    insert_payload(&mut fields, message.payload);
    Value::Object(fields)
}

/// A payload into JSON `fields`: as the string `payload` when it is UTF-8,
/// else base64 under `payload_base64`.
pub(crate) fn insert_payload(fields: &mut serde_json::Map<String, Value>, payload: &[u8]) {
    match std::str::from_utf8(payload) {
        Ok(text) => fields.insert("payload".into(), text.into()),
        Err(_) => fields.insert(
            "payload_base64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(payload)
                .into(),
        ),
    };
}

/// Writes one message to standard output in `format`.
pub(crate) fn message(message: Shown<'_>, format: Format) -> std::io::Result<()> {
    match format {
        Format::Raw => {
            let mut bytes = Vec::with_capacity(message.payload.len() + 1);
            bytes.extend_from_slice(message.payload);
            bytes.push(b'\n');
            write(&bytes)
        }
        Format::Json => json(&message_json(message)),
        Format::Jsonl => line(&message_json(message).to_string()),
    }
}

/// Rows of text printed as aligned columns under a header.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    /// Adds a row; it should have one cell per header.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text: columns two spaces apart, no trailing spaces.
    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                let cells = self.rows.iter().filter_map(|row| row.get(c));
                cells.map(|cell| cell.chars().count()).max().unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let cells = row.iter().zip(&widths);
            let padded: Vec<String> = cells.map(|(cell, w)| format!("{cell:<w$}")).collect();
            text.push_str(padded.join("  ").trim_end());
            text.push('\n');
        }
        text
    }
}

/// Topics as a table.
pub(crate) fn topics_table(topics: &[Topic]) -> String {
    let mut table = Table::new(&[
        "NAME",
        "STORAGE",
        "NEXT OFFSET",
        "CREATED",
        "RETAINED",
        "RETENTION",
    ]);
    for topic in topics {
        table.row(vec![
            topic.name.clone(),
            topic.storage.to_string(),
            topic.next_offset.to_string(),
            time_text(topic.create_time),
            topic.retained_messages.to_string(),
            retention_cell(&topic.retention),
        ]);
    }
    table.render()
}

/// Subscriptions as a table.
pub(crate) fn subscriptions_table(subs: &[Subscription]) -> String {
    let mut table = Table::new(&[
        "NAME",
        "TOPIC",
        "BACKLOG",
        "IN FLIGHT",
        "STREAMS",
        "ACK DEADLINE",
    ]);
    for sub in subs {
        table.row(vec![
            sub.name.clone(),
            sub.topic.clone(),
            sub.backlog.to_string(),
            sub.in_flight.to_string(),
            sub.open_streams.to_string(),
            duration_text(sub.ack_deadline),
        ]);
    }
    table.render()
}

/// `field: value` lines, the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(name, _)| name.len() + 1)
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(name, value)| format!("{:<width$} {value}\n", format!("{name}:")))
        .collect()
}

/// A topic as `field: value` lines.
pub(crate) fn topic_text(topic: &Topic) -> String {
    fields(&[
        ("name", topic.name.clone()),
        ("first offset", topic.first_offset.to_string()),
        ("next offset", topic.next_offset.to_string()),
        ("retained messages", topic.retained_messages.to_string()),
        ("retained bytes", bytes_text(topic.retained_bytes)),
        ("retention", retention_text(&topic.retention)),
        (
            "dedup window",
            if topic.dedup_window.is_zero() {
                "none (ids are not deduplicated)".to_owned()
            } else {
                age_text(topic.dedup_window)
            },
        ),
        ("storage", storage_text(topic)),
        ("created", time_text(topic.create_time)),
    ])
}

/// What a topic's storage class means for its messages.
fn storage_text(topic: &Topic) -> String {
    match topic.storage {
        StorageClass::Disk => "disk".to_owned(),
        StorageClass::Memory => format!(
            "memory (lost on restart; at most {}, the oldest dropped beyond it)",
            bytes_text(topic.retention.max_bytes.unwrap_or(MEMORY_TOPIC_BYTES))
        ),
    }
}

/// A memory topic's bound when its retention sets no `max_bytes`.
const MEMORY_TOPIC_BYTES: u64 = 64 << 20;

/// A subscription as `field: value` lines.
pub(crate) fn subscription_text(sub: &Subscription) -> String {
    fields(&[
        ("name", sub.name.clone()),
        ("topic", sub.topic.clone()),
        ("ack deadline", duration_text(sub.ack_deadline)),
        ("backlog", sub.backlog.to_string()),
        ("in flight", sub.in_flight.to_string()),
        ("ack floor", sub.ack_floor.to_string()),
        ("open streams", sub.open_streams.to_string()),
        ("created", time_text(sub.create_time)),
        (
            "filter",
            if sub.filter.is_empty() {
                "none".to_owned()
            } else {
                sub.filter.clone()
            },
        ),
        (
            "ordered",
            if sub.enable_message_ordering {
                "yes, by key"
            } else {
                "no"
            }
            .to_owned(),
        ),
        (
            "dead letters",
            sub.dead_letter_policy
                .as_ref()
                .map_or("none".to_owned(), |policy| {
                    format!(
                        "to \"{}\" after {} failed deliveries; {} moved",
                        policy.topic, policy.max_delivery_attempts, sub.dead_lettered
                    )
                }),
        ),
        ("rejected", sub.rejected.to_string()),
        (
            "delay",
            if sub.delivery_delay.is_zero() {
                "none".to_owned()
            } else {
                age_text(sub.delivery_delay)
            },
        ),
        ("delayed", sub.delayed.to_string()),
        (
            "retry",
            sub.retry_policy.map_or("at once".to_owned(), |policy| {
                format!(
                    "after {}, doubling up to {}",
                    duration_text(policy.minimum_backoff),
                    duration_text(policy.maximum_backoff)
                )
            }),
        ),
        (
            "push",
            sub.push_config.as_ref().map_or("no".to_owned(), |push| {
                // Header values may be secrets: only their names are shown.
                let headers: Vec<&str> = push.headers.keys().map(String::as_str).collect();
                format!(
                    "to {} ({} at a time{})",
                    push.endpoint,
                    push.max_outstanding.unwrap_or(100),
                    if headers.is_empty() {
                        String::new()
                    } else {
                        format!(", headers {}", headers.join(", "))
                    }
                )
            }),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_client::RetryPolicy;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(&["NAME", "N"]);
        table.row(vec!["orders".into(), "12".into()]);
        table.row(vec!["a".into(), String::new()]);
        assert_eq!(table.render(), "NAME    N\norders  12\na\n");
    }

    #[test]
    fn subscription_json_has_the_live_figures() {
        let sub = Subscription {
            name: "billing".into(),
            topic: "orders".into(),
            ack_deadline: Duration::from_secs(30),
            backlog: 3,
            in_flight: 1,
            ack_floor: 2,
            open_streams: 1,
            create_time: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1500)),
            filter: "attributes:vip".into(),
            retry_policy: Some(RetryPolicy::new(
                Duration::from_millis(500),
                Duration::from_secs(60),
            )),
            enable_message_ordering: true,
            dead_letter_policy: Some(tidings_client::DeadLetterPolicy::new("orders.dead", 5)),
            dead_lettered: 2,
            rejected: 1,
            delivery_delay: Duration::ZERO,
            delayed: 0,
            push_config: None,
        };
        let value = subscription_json(&sub);
        assert_eq!(value["backlog"], 3);
        assert_eq!(value["ack_deadline_seconds"], 30);
        assert_eq!(value["create_time"], "1970-01-01T00:00:01.500000000Z");
        assert!(subscription_text(&sub).contains("ack deadline: 30s"));
        assert_eq!(value["filter"], "attributes:vip");
        assert_eq!(value["retry_policy"]["minimum_backoff_seconds"], 0.5);
        assert_eq!(value["enable_message_ordering"], true);
        assert_eq!(value["dead_letter_policy"]["max_delivery_attempts"], 5);
        assert_eq!(
            (&value["dead_lettered"], &value["rejected"]),
            (&json!(2), &json!(1))
        );
        assert!(
            subscription_text(&sub)
                .contains("to \"orders.dead\" after 5 failed deliveries; 2 moved"),
            "{}",
            subscription_text(&sub)
        );
        assert!(
            subscription_text(&sub).contains("after 500ms, doubling up to 1m"),
            "{}",
            subscription_text(&sub)
        );
        let text = subscription_text(&sub);
        let filter_line = text.lines().find(|line| line.starts_with("filter:"));
        assert!(
            filter_line.is_some_and(|line| line.ends_with(" attributes:vip")),
            "{text}"
        );
    }

    #[test]
    fn stored_messages_have_no_attempt_and_binary_payloads_are_base64() {
        let message = StoredMessage {
            offset: 7,
            payload: bytes::Bytes::from_static(b"\xff\x00"),
            key: String::new(),
            attributes: HashMap::new(),
            id: String::new(),
            publish_time: None,
        };
        let value = message_json(Shown::from(&message));
        assert_eq!(value["offset"], 7);
        assert_eq!(value["payload_base64"], "/wA=");
        assert!(value.get("payload").is_none());
        assert!(value.get("delivery_attempt").is_none(), "{value}");
    }

    fn topic(retention: Retention) -> Topic {
        Topic {
            name: "orders".into(),
            first_offset: 2,
            next_offset: 12,
            create_time: None,
            retention,
            retained_messages: 10,
            retained_bytes: 2560,
            dedup_window: Duration::from_secs(120),
            storage: StorageClass::Disk,
        }
    }

    #[test]
    fn the_storage_class_shows_everywhere_and_a_memory_topic_its_bound() {
        let disk = topic(Retention::unlimited());
        let memory = Topic {
            storage: StorageClass::Memory,
            ..topic(Retention::unlimited())
        };
        assert_eq!(topic_json(&disk)["storage"], "disk");
        assert_eq!(topic_json(&memory)["storage"], "memory");
        assert!(topic_text(&disk).contains("storage:           disk\n"));
        let text = topic_text(&memory);
        assert!(
            text.contains("memory (lost on restart; at most 64.0 MiB"),
            "{text}"
        );
        let bounded = Topic {
            retention: Retention::unlimited().max_bytes(1 << 20),
            ..memory.clone()
        };
        let text = topic_text(&bounded);
        assert!(text.contains("at most 1.0 MiB"), "{text}");
        let table = topics_table(&[disk, memory]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME    STORAGE"), "{table}");
        assert!(lines[1].starts_with("orders  disk "), "{table}");
        assert!(lines[2].starts_with("orders  memory "), "{table}");
    }

    #[test]
    fn topic_json_has_retention_and_retained_messages() {
        let value = topic_json(&topic(
            Retention::unlimited()
                .max_age(Duration::from_secs(7 * 86_400))
                .discard_acked(true),
        ));
        assert_eq!(value["retained_messages"], 10);
        assert_eq!(value["retained_bytes"], 2560);
        assert_eq!(value["retention"]["max_age_seconds"], 604_800.0);
        assert_eq!(value["retention"]["max_messages"], Value::Null);
        assert_eq!(value["retention"]["discard_acked"], true);
        let unlimited = topic_json(&topic(Retention::unlimited()));
        assert_eq!(
            unlimited["retention"],
            json!({
                "max_age_seconds": null,
                "max_messages": null,
                "max_bytes": null,
                "discard_acked": false,
            })
        );
    }

    #[test]
    fn topic_text_names_every_part_of_the_retention() {
        let text = topic_text(&topic(
            Retention::unlimited().max_age(Duration::from_secs(7 * 86_400)),
        ));
        assert!(
            text.contains(
                "retention:         max age 7d, max messages unlimited, max bytes unlimited, \
                 discard acked no\n"
            ),
            "{text}"
        );
        assert!(text.contains("retained messages: 10\n"), "{text}");
        assert!(text.contains("retained bytes:    2.5 KiB\n"), "{text}");
        let text = topic_text(&topic(
            Retention::unlimited()
                .max_messages(5)
                .max_bytes(10 << 30)
                .discard_acked(true),
        ));
        assert!(
            text.contains(
                "max age unlimited, max messages 5, max bytes 10.0 GiB, discard acked yes"
            ),
            "{text}"
        );
    }

    #[test]
    fn topics_table_shows_retention_short() {
        let table = topics_table(&[
            topic(Retention::unlimited()),
            topic(
                Retention::unlimited()
                    .max_age(Duration::from_secs(3600))
                    .max_messages(1000)
                    .discard_acked(true),
            ),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("RETAINED  RETENTION"), "{table}");
        assert!(lines[1].ends_with("  10        keep all"), "{table}");
        assert!(
            lines[2].ends_with("  10        1h, 1000 messages, until acked"),
            "{table}"
        );
    }

    #[test]
    fn ages_are_shown_in_the_units_retention_takes() {
        assert_eq!(age_text(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(age_text(Duration::from_secs(36 * 3600)), "1d 12h");
        assert_eq!(age_text(Duration::from_secs(90)), "1m 30s");
        assert_eq!(age_text(Duration::from_millis(1500)), "1s 500ms");
        for age in ["7d", "1d 12h", "1m 30s", "1s 500ms"] {
            let parsed = humantime::parse_duration(age).expect("parses back");
            assert_eq!(age_text(parsed), age);
        }
    }

    #[test]
    fn unknown_times_are_null_or_a_dash() {
        assert_eq!(time_json(None), Value::Null);
        assert_eq!(time_text(None), "-");
    }
}
