//! `tidings call`: publish a request to a topic and print the reply that a
//! responder sends (`PublisherService.Call`).

use std::time::Duration;

use serde_json::json;
use tidings_client::Message;

use super::Context;
use crate::{output, values};

/// Arguments of `tidings call`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// The topic the responders consume.
    topic: String,

    /// The request.
    message: String,

    /// A key for the request, such as an order id.
    #[arg(long, short)]
    key: Option<String>,

    /// An attribute of the request, as NAME=VALUE; repeat for several.
    #[arg(
        long = "attr",
        short,
        value_name = "NAME=VALUE",
        value_parser = values::parse_attribute
    )]
    attributes: Vec<(String, String)>,

    /// How long to wait for the reply (at most 10m).
    #[arg(long, default_value = "30s", value_parser = values::parse_timeout, value_name = "DURATION")]
    timeout: Duration,
}

/// Runs `tidings call`.
///
/// # Errors
/// The broker's refusal, or DEADLINE_EXCEEDED when nobody answered within
/// the timeout.
pub(crate) async fn run(ctx: &Context, args: CallArgs) -> anyhow::Result<()> {
    let client = ctx.connect().await?;
    let mut request = Message::new(args.message);
    if let Some(key) = args.key {
        request = request.with_key(key);
    }
    for (name, value) in args.attributes {
        request = request.with_attribute(name, value);
    }
    let answer = client.call(&args.topic, request, args.timeout).await?;
    let reply = &answer.reply;
    if ctx.json {
        let mut fields = serde_json::Map::new();
        fields.insert("key".into(), reply.key.clone().into());
        fields.insert("attributes".into(), json!(reply.attributes));
        output::insert_payload(&mut fields, &reply.payload);
        return Ok(output::json(&json!({
            "topic": args.topic,
            "offset": answer.offset,
            "reply": fields,
        }))?);
    }
    let mut bytes = reply.payload.to_vec();
    bytes.push(b'\n');
    Ok(output::write(&bytes)?)
}
