//! A connection's outbox: the bounded queue of frames the matchmaker pushes and the
//! connection task writes.
//!
//! Why not `tokio::sync::mpsc`: its channel allocates its first block of 32 slots up
//! front, 1.8 KB for `Message`, and keeps it for the channel's life, so every idle
//! connection paid for it (a third of its memory, #11 item 5). This queue allocates only
//! while frames wait and gives the memory back once drained; an idle connection's outbox
//! is one small allocation. One sender side (the matchmaker, which owns the session) and
//! one receiver (the connection task), a lock held for a push or a pop only.
//!
//! The API follows tokio's (`try_send`, `recv`, `try_recv`, `close`, and its error types),
//! so both ends read as before.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio_tungstenite::tungstenite::Message;

/// The matchmaker's end: pushes frames without waiting.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The connection task's end.
#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Message>,
    /// The receiver closed (or dropped) its end: pushes fail with `Closed`.
    closed: bool,
    /// The sender was dropped: once the queue is empty, `recv` answers `None`.
    sender_gone: bool,
    /// The receiver waiting in `recv`.
    waker: Option<Waker>,
}

/// A new outbox holding at most `capacity` frames (at least one).
pub fn channel(capacity: usize) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        state: Mutex::new(State::default()),
    });
    (
        Outbox {
            shared: Arc::clone(&shared),
        },
        OutboxReceiver { shared },
    )
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue consistent (push and pop are
        // single calls): go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn pop(&mut self) -> Option<Message> {
        let msg = self.queue.pop_front()?;
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            // Drained: give the memory back, idle connections are the common case.
            self.queue = VecDeque::new();
        }
        Some(msg)
    }
}

impl Outbox {
    /// Queues `msg`; `Full` when `capacity` frames wait (the reader is slow), `Closed`
    /// when the connection is gone.
    pub fn try_send(&self, msg: Message) -> Result<(), TrySendError<Message>> {
        let waker = {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(TrySendError::Closed(msg));
            }
            if st.queue.len() >= self.shared.capacity {
                return Err(TrySendError::Full(msg));
            }
            st.queue.push_back(msg);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.shared.lock();
            st.sender_gone = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl OutboxReceiver {
    /// The next frame; `None` once the sender is gone and nothing is left.
    pub async fn recv(&mut self) -> Option<Message> {
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(msg) = st.pop() {
                return Poll::Ready(Some(msg));
            }
            if st.sender_gone {
                return Poll::Ready(None);
            }
            match &mut st.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next frame if one waits.
    pub fn try_recv(&mut self) -> Result<Message, TryRecvError> {
        let mut st = self.shared.lock();
        match st.pop() {
            Some(msg) => Ok(msg),
            None if st.sender_gone => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Refuses further frames (the sender gets `Closed`); those already queued can still
    /// be received.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.closed = true;
        // Nobody will read them: free them now rather than with the sender.
        st.queue = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn text(s: &str) -> Message {
        Message::text(s.to_owned())
    }

    #[test]
    fn frames_come_out_in_order_up_to_the_capacity() {
        let (tx, mut rx) = channel(2);
        tx.try_send(text("a")).expect("room for a");
        tx.try_send(text("b")).expect("room for b");
        assert!(matches!(tx.try_send(text("c")), Err(TrySendError::Full(_))));
        assert_eq!(rx.try_recv().ok(), Some(text("a")));
        tx.try_send(text("c")).expect("room again");
        assert_eq!(rx.try_recv().ok(), Some(text("b")));
        assert_eq!(rx.try_recv().ok(), Some(text("c")));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn a_drained_outbox_holds_no_queue_memory() {
        let (tx, mut rx) = channel(256);
        for i in 0..100 {
            tx.try_send(text(&i.to_string())).expect("room");
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.lock().queue.capacity(), 0);
        let (_tx, rx) = channel(256);
        assert_eq!(
            rx.shared.lock().queue.capacity(),
            0,
            "nothing allocated up front"
        );
    }

    #[test]
    fn a_closed_or_dropped_receiver_refuses_frames_and_keeps_what_was_queued() {
        let (tx, mut rx) = channel(4);
        tx.try_send(text("kept")).expect("room");
        rx.close();
        assert!(matches!(
            tx.try_send(text("x")),
            Err(TrySendError::Closed(_))
        ));
        assert_eq!(rx.try_recv().ok(), Some(text("kept")));
        drop(rx);
        assert!(matches!(
            tx.try_send(text("y")),
            Err(TrySendError::Closed(_))
        ));
    }

    /// A reader that also wakes for other reasons (as the connection's `select!` does)
    /// and a writer on another thread: every frame arrives, none waits for a later one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_up_is_lost_between_threads() {
        const N: usize = 20_000;
        let (tx, mut rx) = channel(N);
        let writer = std::thread::spawn(move || {
            for i in 0..N {
                tx.try_send(text(&i.to_string())).expect("room");
                if i % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            tx
        });
        let mut got = 0;
        let mut tick = tokio::time::interval(Duration::from_micros(300));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got < N {
            tokio::select! {
                biased;
                _ = tick.tick() => {}
                m = rx.recv() => {
                    assert_eq!(m, Some(text(&got.to_string())));
                    got += 1;
                }
                _ = tokio::time::sleep_until(deadline) => panic!("stuck after {got} frames"),
            }
        }
        let tx = writer.join().expect("writer");
        // The last frame was taken by a wake-up, not by a later one.
        tx.try_send(text("last")).expect("room");
        let last = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(last.ok().flatten(), Some(text("last")));
    }

    #[tokio::test]
    async fn recv_waits_for_a_frame_and_ends_when_the_sender_is_gone() {
        let (tx, mut rx) = channel(4);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = rx.recv().await {
                got.push(m);
            }
            got
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(text("one")).expect("room");
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(text("two")).expect("room");
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("recv ends once the sender is gone")
            .expect("reader task");
        assert_eq!(got, vec![text("one"), text("two")]);
    }
}
