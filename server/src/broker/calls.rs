//! `Call` and `Reply`: synchronous request and reply over a topic.
//!
//! The request is an ordinary message, stored and delivered like any other;
//! only the reply is not stored. A call registers a token here before it
//! publishes, then waits for the reply on a oneshot channel; `Reply` finds
//! the call by its token and hands the answer over. A call that stops
//! waiting — its timeout passed, its client went away — takes its token
//! out as it goes (see [`Waiting`]), so a late reply finds nothing and is
//! NOT_FOUND, and the map holds only calls that are waiting now. Tokens are
//! 128 random bits, so a responder cannot guess another call's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use super::{BrokerError, BrokerResult, RESERVED_ATTRIBUTE_PREFIX};
use crate::storage::NewMessage;

/// The longest a call may wait: as long as the longest ack deadline, the
/// longest a responder can hold a request.
pub const MAX_CALL_TIMEOUT: Duration = super::MAX_ACK_DEADLINE;
/// How long a call waits when it does not say.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The calls waiting for a reply, by token.
#[derive(Debug, Default, Clone)]
pub(super) struct Calls(Arc<Mutex<HashMap<u128, oneshot::Sender<NewMessage>>>>);

/// A call's claim on its token: the reply arrives on it; dropping it
/// forgets the token.
pub(super) struct Waiting {
    calls: Calls,
    token: u128,
    reply: oneshot::Receiver<NewMessage>,
}

impl Calls {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u128, oneshot::Sender<NewMessage>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh token, registered.
    pub(super) fn open(&self) -> Waiting {
        let (sender, reply) = oneshot::channel();
        let mut calls = self.lock();
        let token = loop {
            let token: u128 = rand::random();
            if !calls.contains_key(&token) {
                break token;
            }
        };
        calls.insert(token, sender);
        drop(calls);
        Waiting {
            calls: self.clone(),
            token,
            reply,
        }
    }

    /// Hands `reply` to the call `token` names.
    ///
    /// # Errors
    /// [`BrokerError::CallNotFound`] when no call waits under that token.
    pub(super) fn answer(&self, token: &str, reply: NewMessage) -> BrokerResult<()> {
        let waiting = parse(token).and_then(|token| self.lock().remove(&token));
        match waiting {
            Some(sender) => sender
                .send(reply)
                .map_err(|_| BrokerError::CallNotFound(token.to_owned())),
            None => Err(BrokerError::CallNotFound(token.to_owned())),
        }
    }

    /// How many calls wait.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Waiting {
    /// The attributes the request carries: its token, and until when its
    /// caller waits.
    pub(super) fn attributes(&self, deadline: SystemTime) -> [(String, String); 2] {
        [
            (
                format!("{RESERVED_ATTRIBUTE_PREFIX}reply_to"),
                format!("{:032x}", self.token),
            ),
            (
                format!("{RESERVED_ATTRIBUTE_PREFIX}reply_deadline"),
                humantime::format_rfc3339_millis(deadline).to_string(),
            ),
        ]
    }

    /// The reply, if one comes within `timeout`.
    pub(super) async fn reply(mut self, timeout: Duration) -> Option<NewMessage> {
        tokio::time::timeout(timeout, &mut self.reply)
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.calls.lock().remove(&self.token);
    }
}

/// A token as written in `tidings.reply_to`: 32 hex digits.
fn parse(token: &str) -> Option<u128> {
    if token.len() != 32 {
        return None;
    }
    u128::from_str_radix(token, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> NewMessage {
        NewMessage {
            payload: text.to_owned().into(),
            ..NewMessage::default()
        }
    }

    fn token_of(waiting: &Waiting) -> String {
        let [(_, token), _] = waiting.attributes(SystemTime::now());
        token
    }

    #[tokio::test]
    async fn a_reply_reaches_its_call_once() {
        let calls = Calls::default();
        let waiting = calls.open();
        let token = token_of(&waiting);
        calls.answer(&token, reply("yes")).expect("a call waits");
        assert!(matches!(
            calls.answer(&token, reply("again")),
            Err(BrokerError::CallNotFound(_))
        ));
        let got = waiting.reply(Duration::from_secs(60)).await;
        assert_eq!(got.map(|m| m.payload), Some("yes".into()));
        assert_eq!(calls.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_stops_waiting_forgets_its_token() {
        let calls = Calls::default();
        let waiting = calls.open();
        let token = token_of(&waiting);
        assert_eq!(waiting.reply(Duration::from_secs(5)).await, None);
        assert_eq!(calls.len(), 0);
        assert!(matches!(
            calls.answer(&token, reply("late")),
            Err(BrokerError::CallNotFound(_))
        ));
    }

    #[test]
    fn malformed_and_unknown_tokens_are_not_found() {
        let calls = Calls::default();
        let _waiting = calls.open();
        for token in ["", "xyz", "0123", &"f".repeat(33), &"0".repeat(32)] {
            assert!(
                matches!(
                    calls.answer(token, reply("?")),
                    Err(BrokerError::CallNotFound(_))
                ),
                "{token:?}"
            );
        }
    }
}
