//! How results look: JSON values of topics, subscriptions and deliveries,
//! aligned tables and `field: value` lines for people, and writing to
//! standard output.
//!
//! Knows nothing of the broker connection; commands hand it finished
//! results.

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde_json::{Value, json};
use tidings_client::{Delivery, Subscription, Topic};

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

/// A topic as JSON.
pub(crate) fn topic_json(topic: &Topic) -> Value {
    json!({
        "name": topic.name,
        "first_offset": topic.first_offset,
        "next_offset": topic.next_offset,
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
    })
}

/// A delivered message as JSON: the payload as a string when it is UTF-8,
/// else base64 under `payload_base64`.
pub(crate) fn delivery_json(delivery: &Delivery) -> Value {
    let mut value = json!({
        "offset": delivery.offset(),
        "key": delivery.key(),
        "attributes": delivery.attributes(),
        "publish_time": time_json(delivery.publish_time()),
        "delivery_attempt": delivery.delivery_attempt(),
    });
    let payload = match std::str::from_utf8(delivery.payload()) {
        Ok(text) => ("payload", Value::String(text.to_owned())),
        Err(_) => (
            "payload_base64",
            Value::String(base64::engine::general_purpose::STANDARD.encode(delivery.payload())),
        ),
    };
    if let Value::Object(fields) = &mut value {
        fields.insert(payload.0.to_owned(), payload.1);
    }
    value
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
    let mut table = Table::new(&["NAME", "NEXT OFFSET", "CREATED"]);
    for topic in topics {
        table.row(vec![
            topic.name.clone(),
            topic.next_offset.to_string(),
            time_text(topic.create_time),
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
        ("created", time_text(topic.create_time)),
    ])
}

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
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        let value = subscription_json(&sub);
        assert_eq!(value["backlog"], 3);
        assert_eq!(value["ack_deadline_seconds"], 30);
        assert_eq!(value["create_time"], "1970-01-01T00:00:01.500000000Z");
        assert!(subscription_text(&sub).contains("ack deadline: 30s"));
    }

    #[test]
    fn unknown_times_are_null_or_a_dash() {
        assert_eq!(time_json(None), Value::Null);
        assert_eq!(time_text(None), "-");
    }
}
