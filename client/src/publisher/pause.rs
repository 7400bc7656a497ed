//! [`Pause`]: whether an ordered publisher is paused after a failure, and
//! why. The publisher's task pauses it; `Publisher::resume` lifts it.
//!
//! Every pause has a number (its epoch), so that a resume meant for one
//! pause never lifts a later one. This is only the shared flag; the task
//! decides what a pause does to the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::error::Error;

/// The pause state shared by a publisher's handles and its task.
#[derive(Debug, Default)]
pub(crate) struct Pause {
    /// A fast check for `publish`; `state` has the details.
    paused: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The number of the latest pause.
    epoch: u64,
    /// Why the publisher is paused, while it is.
    cause: Option<Error>,
}

impl Pause {
    /// Pauses because of `cause`; returns the pause's epoch.
    pub(crate) fn set(&self, cause: &Error) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.epoch += 1;
        state.cause = Some(cause.duplicate());
        self.paused.store(true, Ordering::Release);
        state.epoch
    }

    /// Lifts the pause, if any; returns the epoch of the pause lifted.
    pub(crate) fn lift(&self) -> Option<u64> {
        if !self.paused.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.cause.take()?;
        self.paused.store(false, Ordering::Release);
        Some(state.epoch)
    }

    /// Whether the publisher is paused.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// [`Error::Paused`] while paused, with the cause.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if !self.paused.load(Ordering::Acquire) {
            return Ok(());
        }
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &state.cause {
            Some(cause) => Err(paused(cause)),
            None => Ok(()),
        }
    }
}

/// The error of a message not sent because of `cause`.
pub(crate) fn paused(cause: &Error) -> Error {
    Error::Paused {
        cause: Box::new(cause.duplicate()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_holds_until_lifted_once() {
        let pause = Pause::default();
        assert!(pause.check().is_ok());
        assert_eq!(pause.lift(), None, "nothing to lift");

        let epoch = pause.set(&Error::from(tonic::Status::internal("disk full")));
        assert!(pause.is_paused());
        let err = pause.check().expect_err("paused");
        assert!(matches!(err, Error::Paused { .. }), "{err:?}");

        assert_eq!(pause.lift(), Some(epoch));
        assert_eq!(pause.lift(), None, "a second resume lifts nothing");
        assert!(pause.check().is_ok());
        assert!(
            pause.set(&Error::Closed) > epoch,
            "each pause has a new epoch"
        );
    }
}
