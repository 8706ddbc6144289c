//! [`Signal`]: a single-waiter wake-up between tasks of one worker thread (not a Unix signal).
//! A task waits; another task of the same thread notifies; a notification that comes before
//! the wait is kept, so none is lost.
//!
//! May depend on: nothing of the crate (a leaf): std only.
//!
//! Invariant: no allocation, no cross-thread use (`!Sync` by its `Cell`s); one waiter at a
//! time (a second waiter replaces the first one's waker).

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Single-waiter local notification (no allocation, no cross-thread use).
#[derive(Default)]
pub struct Signal {
    flag: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.flag.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}
