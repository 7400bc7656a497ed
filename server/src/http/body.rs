//! Reading a request's body, up to the broker's limit.
//!
//! A body over the limit is refused with 413, but only after it has been
//! read to its end (up to [`DRAIN_BYTES`] past the limit): answering while
//! the client is still sending and then closing the connection makes the
//! client see a broken pipe or a reset, never the answer that says what
//! was wrong. A body that declares more than that is refused at once.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use bytes::BytesMut;
use futures::StreamExt as _;

use super::error::HttpError;

/// How much of a body over the limit is read (and thrown away) before the
/// 413 that refuses it.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;

/// The whole of `body` when it is at most `limit` bytes long.
///
/// # Errors
/// 413 when it is longer; 400 when the client stops sending part way.
pub(super) async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, HttpError> {
    let drain_limit = limit.saturating_add(DRAIN_BYTES);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > drain_limit as u64) {
        return Err(HttpError::too_large());
    }
    let mut stream = body.into_data_stream();
    let mut kept = BytesMut::new();
    let mut seen = 0_usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| HttpError::cut_off(&err))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= limit {
            kept.extend_from_slice(&chunk);
        } else if seen > drain_limit {
            break;
        } else {
            kept = BytesMut::new();
        }
    }
    if seen > limit {
        return Err(HttpError::too_large());
    }
    Ok(kept.freeze())
}
