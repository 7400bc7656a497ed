//! The streams of the [`Broker`]: opening a `Subscribe` stream (creating
//! its subscription when asked), a pull (the same task, ending after its
//! first frame), and the task behind both (`stream.rs`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::time::Instant;
use tracing::{Instrument, info_span};

use super::Broker;
use crate::broker::book::Window;
use crate::broker::checks::check_pull;
use crate::broker::stream::{FRAME_BUFFER, StreamSlot, StreamTask};
use crate::broker::subscription::Subscription;
use crate::broker::*;

impl Broker {
    /// Opens a `Subscribe` stream (see [`Engine::subscribe`]).
    pub(super) async fn open_stream(&self, spec: SubscribeSpec) -> BrokerResult<DeliveryStream> {
        if self.inner.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let max_outstanding = spec.max_outstanding.unwrap_or(DEFAULT_MAX_OUTSTANDING);
        if max_outstanding == 0 || max_outstanding > MAX_OUTSTANDING {
            return Err(BrokerError::CountOutOfRange {
                what: "max_outstanding_messages",
                given: max_outstanding as u64,
                max: MAX_OUTSTANDING as u64,
            });
        }
        let sub = self.subscription_for_stream(&spec).await?;
        if sub.is_push() {
            return Err(BrokerError::PushSubscription(sub.name.clone()));
        }
        let slot = StreamSlot::claim(
            &self.inner.open_streams,
            self.inner.config.limits.open_streams,
        )?;
        let window = Window {
            messages: max_outstanding,
            bytes: spec.max_outstanding_bytes,
        };
        Ok(self.spawn_stream(sub, window, spec.max_messages, None, Some(slot)))
    }

    /// A pull (see [`Engine::pull`]).
    pub(super) async fn do_pull(&self, spec: PullSpec) -> BrokerResult<Vec<Delivery>> {
        let PullSpec {
            subscription,
            max_messages,
            wait,
            pusher,
        } = spec;
        if self.inner.shutdown.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        check_pull(max_messages, wait)?;
        let sub = self.subscription(&subscription)?;
        if sub.is_push() && !pusher {
            return Err(BrokerError::PushSubscription(subscription));
        }
        let window = Window {
            messages: max_messages,
            bytes: None,
        };
        let until = Instant::now() + wait;
        let mut frames =
            self.spawn_stream(sub, window, Some(max_messages as u64), Some(until), None);
        // The stream ends after its first turn that sent anything; that
        // turn may have sent more than one frame.
        let mut pulled = Vec::new();
        while let Some(frame) = frames.next().await {
            match frame {
                Ok(frame) => pulled.extend(frame),
                // What was leased already runs to its deadline.
                Err(err) if pulled.is_empty() => return Err(err),
                Err(_) => break,
            }
        }
        Ok(pulled)
    }

    /// Starts the task that delivers to one stream (or one pull, when
    /// `pull_until` is set) and returns its frames.
    fn spawn_stream(
        &self,
        sub: Arc<Subscription>,
        window: Window,
        remaining: Option<u64>,
        pull_until: Option<Instant>,
        slot: Option<StreamSlot>,
    ) -> DeliveryStream {
        let stream = sub.book().open_stream();
        let (frames_tx, end_tx, deliveries) = DeliveryStream::channel(FRAME_BUFFER);
        let span = info_span!("stream", subscription = %sub.name, stream);
        let task = StreamTask {
            store: Arc::clone(&self.inner.store),
            config: self.inner.config.clone(),
            shutdown: self.inner.shutdown.clone(),
            subscription: sub,
            writer: Arc::clone(&self.inner.writer),
            end_to_end: Arc::clone(&self.inner.end_to_end),
            stream,
            window,
            remaining,
            frames_tx,
            end_tx,
            delayed_until: None,
            pull_until,
            _slot: slot,
        };
        self.inner.tasks.spawn(task.run().instrument(span));
        deliveries
    }

    async fn subscription_for_stream(
        &self,
        spec: &SubscribeSpec,
    ) -> BrokerResult<Arc<Subscription>> {
        match (self.subscription(&spec.subscription), &spec.topic) {
            (Ok(sub), Some(topic)) if sub.topic.name != *topic => Err(BrokerError::TopicMismatch {
                subscription: sub.name.clone(),
                actual: sub.topic.name.clone(),
                requested: topic.clone(),
            }),
            (Ok(sub), _) => Ok(sub),
            (Err(BrokerError::SubscriptionNotFound(_)), Some(topic)) => {
                let created = self
                    .create_subscription(SubscriptionSpec {
                        name: spec.subscription.clone(),
                        topic: topic.clone(),
                        ack_deadline: spec.ack_deadline,
                        start: spec.start,
                        filter: String::new(),
                        retry: None,
                        ordered: false,
                        dead_letter: None,
                        delivery_delay: Duration::ZERO,
                        push: None,
                    })
                    .await;
                match created {
                    // Another stream created it first: use it after the same checks.
                    Ok(_) | Err(BrokerError::SubscriptionExists(_)) => {
                        Box::pin(self.subscription_for_stream(spec)).await
                    }
                    Err(err) => Err(err),
                }
            }
            (Err(err), _) => Err(err),
        }
    }
}
