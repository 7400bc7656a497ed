//! [`Deliveries`]: an open `Subscribe` stream, read one message at a time
//! under a timeout.
//!
//! A response frame may carry several messages; they are handed out one by
//! one. Waiting is always for the next event, bounded by
//! [`EVENT_TIMEOUT`](crate::EVENT_TIMEOUT), never a sleep.

use std::collections::VecDeque;

use anyhow::{Context as _, anyhow, bail};
use tidings::v1::{ReceivedMessage, SubscribeRequest, SubscribeResponse};
use tidings_client::Client;
use tonic::Streaming;

use crate::EVENT_TIMEOUT;

/// An open `Subscribe` stream. Dropping it ends the stream, so the broker
/// takes its unacknowledged messages back.
pub struct Deliveries {
    inner: Streaming<SubscribeResponse>,
    buffered: VecDeque<ReceivedMessage>,
}

impl Deliveries {
    /// Opens a stream.
    ///
    /// # Errors
    /// When the broker refuses the call (its status is in the error).
    pub async fn open(client: &Client, request: SubscribeRequest) -> anyhow::Result<Self> {
        let name = request.subscription.clone();
        let response = tokio::time::timeout(
            EVENT_TIMEOUT,
            client.subscriber_service().subscribe(request),
        )
        .await
        .map_err(|_| anyhow!("Subscribe to {name:?} did not answer within {EVENT_TIMEOUT:?}"))?
        .with_context(|| format!("subscribe to {name:?}"))?;
        Ok(Self {
            inner: response.into_inner(),
            buffered: VecDeque::new(),
        })
    }

    /// Opens a stream that the broker must refuse, and returns the status it
    /// ends with, whether the call itself fails or the stream's first event
    /// is the error.
    ///
    /// # Errors
    /// When the stream delivers a message or ends with OK, or nothing happens
    /// within the timeout.
    pub async fn open_expecting_error(
        client: &Client,
        request: SubscribeRequest,
    ) -> anyhow::Result<tonic::Status> {
        let mut subscriber = client.subscriber_service();
        let call = subscriber.subscribe(request);
        let response = match tokio::time::timeout(EVENT_TIMEOUT, call).await {
            Err(_) => bail!("Subscribe did not answer within {EVENT_TIMEOUT:?}"),
            Ok(Err(status)) => return Ok(status),
            Ok(Ok(response)) => response,
        };
        let mut stream = Self {
            inner: response.into_inner(),
            buffered: VecDeque::new(),
        };
        match stream.next_event().await? {
            Some(Err(status)) => Ok(status),
            Some(Ok(message)) => bail!("expected an error, the stream delivered {message:?}"),
            None => bail!("expected an error, the stream ended with OK"),
        }
    }

    /// Waits for the next event: a message, the error that ended the
    /// stream, or `None` when it ended with OK.
    async fn next_event(
        &mut self,
    ) -> anyhow::Result<Option<Result<ReceivedMessage, tonic::Status>>> {
        loop {
            if let Some(message) = self.buffered.pop_front() {
                return Ok(Some(Ok(message)));
            }
            let frame = tokio::time::timeout(EVENT_TIMEOUT, self.inner.message())
                .await
                .map_err(|_| anyhow!("no delivery within {EVENT_TIMEOUT:?}"))?;
            match frame {
                Ok(Some(response)) => self.buffered.extend(response.messages),
                Ok(None) => return Ok(None),
                Err(status) => return Ok(Some(Err(status))),
            }
        }
    }

    /// Waits for the next message.
    ///
    /// # Errors
    /// When none arrives within the timeout or the stream ends.
    pub async fn next(&mut self) -> anyhow::Result<ReceivedMessage> {
        match self.next_event().await? {
            Some(Ok(message)) => Ok(message),
            Some(Err(status)) => Err(anyhow!("the stream ended with {status:?}")),
            None => Err(anyhow!("the stream ended with OK")),
        }
    }

    /// Waits for the next `n` messages.
    ///
    /// # Errors
    /// When any of them does not arrive within the timeout, or the stream
    /// ends first.
    pub async fn next_n(&mut self, n: usize) -> anyhow::Result<Vec<ReceivedMessage>> {
        let mut messages = Vec::with_capacity(n);
        while messages.len() < n {
            let message = self
                .next()
                .await
                .with_context(|| format!("waiting for message {} of {n}", messages.len() + 1))?;
            messages.push(message);
        }
        Ok(messages)
    }

    /// Waits for the stream to end; returns `None` when it ended with OK, or
    /// the status it ended with.
    ///
    /// # Errors
    /// When a message arrives instead, or the stream stays open past the
    /// timeout.
    pub async fn end(&mut self) -> anyhow::Result<Option<tonic::Status>> {
        match self.next_event().await? {
            Some(Ok(message)) => bail!("expected the stream to end, got {message:?}"),
            Some(Err(status)) => Ok(Some(status)),
            None => Ok(None),
        }
    }

    /// Messages already received in a frame but not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buffered.len()
    }
}
