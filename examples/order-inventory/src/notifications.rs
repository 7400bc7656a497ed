//! The notifier's notifications: at most one per order, journaled before
//! the push that brought it is answered, rebuilt from the journal on start.
//!
//! Pushes come at least once, several at a time, so one writer task takes
//! them in turn: it looks the order up, and only for an order it has not
//! notified appends the notification to the journal and lists it. A caller
//! that stops waiting (the broker hung up) cannot leave a notification
//! half made; a push of an order already notified changes nothing. No
//! networking here.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::events::{Decision, OrderId};
use crate::journal::{Journal, JournalError};

/// The journal's file name inside the notifier's data directory.
pub const JOURNAL_FILE: &str = "notifications.jsonl";
/// The notifier's push subscription on `stock.reserved`.
pub const SUBSCRIPTION: &str = "notifier.stock-reserved";
/// Notifications waiting for the writer.
const COMMAND_BUFFER: usize = 64;

/// One customer told that their order is reserved:
/// `{"order_id": "...", "sku": "tea-01", "quantity": 2, "text": "...",
/// "offset": 7, "delivery_attempt": 1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The order.
    pub order_id: OrderId,
    /// The article reserved.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// What the customer is told.
    pub text: String,
    /// The offset of the `stock.reserved` event it comes from.
    pub offset: u64,
    /// Which push of that event brought it, from 1 (earlier ones failed).
    pub delivery_attempt: u32,
}

impl Notification {
    /// The notification of a reservation, pushed from `offset` in its
    /// `attempt`-th POST.
    pub fn of_reservation(decision: Decision, offset: u64, attempt: u32) -> Self {
        let text = format!(
            "Good news: your order {} is reserved ({} x {}).",
            decision.order_id, decision.quantity, decision.sku
        );
        Self {
            order_id: decision.order_id,
            sku: decision.sku,
            quantity: decision.quantity,
            text,
            offset,
            delivery_attempt: attempt,
        }
    }
}

/// What the notifier holds: `GET /notifications` returns it as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationReport {
    /// Every notification, oldest first; one per order.
    pub notifications: Vec<Notification>,
    /// Pushes of an order already notified, ignored since this process
    /// started.
    pub repeats_ignored: u64,
    /// Pushes refused for a missing or wrong token since this process
    /// started.
    pub unauthorized: u64,
}

/// What [`Notifications::notify`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notified {
    /// The customer is notified: the notification is journaled and listed.
    New,
    /// The order was notified before: nothing changed.
    Repeat,
}

/// Why a notification was not made.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The journal could not store it: it does not exist.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The writer is gone (the service is stopping).
    #[error("the notifier has stopped")]
    Stopped,
}

/// The notifications in the order made, the orders they are for, and the
/// repeats ignored.
#[derive(Debug, Default)]
struct State {
    list: Vec<Notification>,
    orders: HashSet<OrderId>,
    repeats: u64,
}

/// A handle on the notifications, for the HTTP handlers: changes go through
/// the writer task, reads see what it applied. Cloning is cheap; the
/// writer stops when every clone is gone.
#[derive(Debug, Clone)]
pub struct Notifications {
    commands_tx: mpsc::Sender<Command>,
    state: Arc<Mutex<State>>,
}

/// A notification to make, and where to say what came of it.
struct Command {
    notification: Notification,
    reply: oneshot::Sender<Result<Notified, NotifyError>>,
}

impl Notifications {
    /// Opens the journal `notifications.jsonl` in `data_dir`, rebuilds the
    /// notifications from it and starts the writer task.
    ///
    /// # Errors
    /// When the journal cannot be opened or read.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub async fn open(data_dir: &Path) -> Result<Self, JournalError> {
        let (journal, records) = Journal::<Notification>::open(data_dir.join(JOURNAL_FILE)).await?;
        let mut state = State::default();
        for notification in records {
            state.orders.insert(notification.order_id.clone());
            state.list.push(notification);
        }
        let state = Arc::new(Mutex::new(state));
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_BUFFER);
        let writer = Writer {
            journal,
            state: Arc::clone(&state),
        };
        tokio::spawn(writer.run(commands_rx));
        Ok(Self { commands_tx, state })
    }

    /// Makes `notification` unless its order was notified: journals it,
    /// then lists it, in the writer, whether or not the caller waits.
    ///
    /// # Errors
    /// [`NotifyError::Journal`] when the journal cannot store it (it is
    /// not made then), [`NotifyError::Stopped`] when the writer is gone.
    pub async fn notify(&self, notification: Notification) -> Result<Notified, NotifyError> {
        let (reply, answer) = oneshot::channel();
        let command = Command {
            notification,
            reply,
        };
        self.commands_tx
            .send(command)
            .await
            .map_err(|_| NotifyError::Stopped)?;
        answer.await.map_err(|_| NotifyError::Stopped)?
    }

    /// Every notification, oldest first.
    pub fn list(&self) -> Vec<Notification> {
        self.lock().list.clone()
    }

    /// Repeats ignored since this process started.
    pub fn repeats(&self) -> u64 {
        self.lock().repeats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The one task that makes notifications.
struct Writer {
    journal: Journal<Notification>,
    state: Arc<Mutex<State>>,
}

impl Writer {
    async fn run(self, mut commands_rx: mpsc::Receiver<Command>) {
        while let Some(Command {
            notification,
            reply,
        }) = commands_rx.recv().await
        {
            // A caller that stopped waiting dropped its receiver: the
            // notification is made all the same.
            let _ = reply.send(self.notify(notification).await);
        }
        debug!("the notifier's writer stopped");
    }

    async fn notify(&self, notification: Notification) -> Result<Notified, NotifyError> {
        {
            let mut state = self.lock();
            if state.orders.contains(&notification.order_id) {
                state.repeats += 1;
                return Ok(Notified::Repeat);
            }
        }
        self.journal.append(&notification).await?;
        let mut state = self.lock();
        state.orders.insert(notification.order_id.clone());
        state.list.push(notification);
        Ok(Notified::New)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Outcome;

    fn reserved(order: &str, offset: u64) -> Notification {
        let decision = Decision {
            order_id: OrderId::from(order),
            sku: "tea-01".into(),
            quantity: 2,
            outcome: Outcome::Reserved,
        };
        Notification::of_reservation(decision, offset, 1)
    }

    #[tokio::test]
    async fn an_order_is_notified_once_even_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let notifications = Notifications::open(dir.path()).await.expect("open");
        let first = reserved("o-1", 3);
        let made = notifications.notify(first.clone()).await.expect("notify");
        assert_eq!(made, Notified::New);
        // The same event pushed again, and another event for the order.
        let again = notifications.notify(first.clone()).await.expect("notify");
        assert_eq!(again, Notified::Repeat);
        let copy = notifications.notify(reserved("o-1", 9)).await;
        assert_eq!(copy.expect("notify"), Notified::Repeat);
        assert_eq!(notifications.list(), vec![first.clone()]);
        assert_eq!(notifications.repeats(), 2);
        drop(notifications);

        let notifications = Notifications::open(dir.path()).await.expect("reopen");
        assert_eq!(notifications.list(), vec![first.clone()]);
        assert_eq!(notifications.repeats(), 0, "counted per process");
        let again = notifications.notify(first.clone()).await.expect("notify");
        assert_eq!(again, Notified::Repeat);
        let second = reserved("o-2", 4);
        let made = notifications.notify(second.clone()).await.expect("notify");
        assert_eq!(made, Notified::New);
        assert_eq!(notifications.list(), vec![first, second]);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_still_leaves_the_notification_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let notifications = Notifications::open(dir.path()).await.expect("open");
        // Polled once: the notification is with the writer, then the
        // caller goes away, as a handler whose client hung up does.
        let mut notifying = Box::pin(notifications.notify(reserved("gone", 1)));
        assert!(futures::poll!(notifying.as_mut()).is_pending());
        drop(notifying);
        let again = notifications.notify(reserved("gone", 1)).await;
        assert_eq!(again.expect("notify"), Notified::Repeat);
        assert_eq!(notifications.list().len(), 1);
    }
}
