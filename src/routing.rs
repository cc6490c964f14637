//! Who gets an event. Direct events (`user` set) go to every subscription of
//! that user: each of their devices.

use crate::event::Event;
use crate::subscriptions::{Store, Subscription, Unreadable};

/// The devices an event is meant for.
#[derive(Debug, Default)]
pub struct Targets {
    pub subscriptions: Vec<Subscription>,
    /// Stored subscriptions that cannot be read back, with what is wrong with each.
    pub unreadable: Vec<Unreadable>,
}

/// Finds target subscriptions. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    store: Store,
}

impl Router {
    pub fn new(store: Store) -> Router {
        Router { store }
    }

    /// The targets of `event`; `None` when the event names no user, so nothing can route it.
    pub async fn targets(&self, event: &Event) -> anyhow::Result<Option<Targets>> {
        let Some(user) = &event.user else {
            return Ok(None);
        };
        let mut targets = Targets::default();
        for found in self.store.for_user(user).await? {
            match found {
                Ok(sub) => targets.subscriptions.push(sub),
                Err(e) => targets.unreadable.push(e),
            }
        }
        Ok(Some(targets))
    }
}
