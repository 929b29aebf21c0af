//! The latest-value slot between a producer thread (decoder, camera) and the UI.
//!
//! Video must never queue up on its way to the screen: if the UI repaints slower than
//! frames arrive, old frames are worthless and a queue would only add latency. So the
//! producer overwrites a single slot (newest wins) and the UI takes whatever is newest
//! when it paints, using a version number to know whether anything changed. Overwritten
//! frames are counted so the stats panel can show how many frames never reached the
//! screen.

use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug)]
struct Slot<T> {
    value: Option<T>,
    version: u64,
    overwritten: u64,
}

/// A cloneable handle to one shared slot. All clones see the same slot.
#[derive(Debug)]
pub struct FrameMailbox<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> Clone for FrameMailbox<T> {
    fn clone(&self) -> Self {
        Self {
            slot: Arc::clone(&self.slot),
        }
    }
}

impl<T> Default for FrameMailbox<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> FrameMailbox<T> {
    /// An empty mailbox at version 0.
    pub fn new() -> Self {
        Self {
            slot: Arc::new(Mutex::new(Slot {
                value: None,
                version: 0,
                overwritten: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        // A panic elsewhere while holding the lock leaves a valid slot; keep going.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `value` as the newest, replacing (and counting) any value nobody took.
    /// Returns the new version (1, 2, 3, …).
    pub fn put(&self, value: T) -> u64 {
        let mut s = self.lock();
        if s.value.replace(value).is_some() {
            s.overwritten += 1;
        }
        s.version += 1;
        s.version
    }

    /// Takes the value out if its version is newer than `last_version` (pass 0 the first
    /// time, then the version you got back). `None` if nothing new arrived.
    pub fn take_if_newer(&self, last_version: u64) -> Option<(u64, T)> {
        let mut s = self.lock();
        if s.version > last_version {
            let version = s.version;
            s.value.take().map(|v| (version, v))
        } else {
            None
        }
    }

    /// Empties the slot (e.g. when a call ends, so the UI stops showing the old
    /// picture). The version is kept, so readers never see it go backwards.
    pub fn clear(&self) {
        self.lock().value = None;
    }

    /// Version of the newest value ever put (0 if none).
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// How many values were replaced before anybody took them.
    pub fn overwritten(&self) -> u64 {
        self.lock().overwritten
    }
}

impl<T: Clone> FrameMailbox<T> {
    /// A copy of the newest value if newer than `last_version`, leaving it in place (for
    /// a second reader such as a stamp reader that must not steal the UI's frame).
    pub fn peek_if_newer(&self, last_version: u64) -> Option<(u64, T)> {
        let s = self.lock();
        if s.version > last_version {
            s.value.clone().map(|v| (s.version, v))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_wins_and_overwrites_are_counted() {
        let mb = FrameMailbox::new();
        assert!(mb.take_if_newer(0).is_none());
        mb.put(1);
        mb.put(2);
        let v3 = mb.put(3);
        assert_eq!(mb.overwritten(), 2);
        assert_eq!(mb.take_if_newer(0), Some((v3, 3)));
        assert!(mb.take_if_newer(v3).is_none(), "nothing newer");
        assert!(mb.take_if_newer(0).is_none(), "already taken");
        let v4 = mb.put(4);
        assert_eq!(mb.overwritten(), 2, "slot was empty");
        assert_eq!(mb.peek_if_newer(v3), Some((v4, 4)));
        assert_eq!(mb.take_if_newer(v3), Some((v4, 4)));
        mb.put(5);
        mb.clear();
        assert!(mb.take_if_newer(v4).is_none());
    }

    #[test]
    fn works_across_threads() {
        let mb = FrameMailbox::new();
        let producer = mb.clone();
        let h = std::thread::spawn(move || {
            for i in 1..=1000u32 {
                producer.put(i);
            }
        });
        let mut last = 0;
        let mut seen = Vec::new();
        while seen.last() != Some(&1000) {
            if let Some((v, x)) = mb.take_if_newer(last) {
                assert!(v > last);
                last = v;
                seen.push(x);
            }
            std::thread::yield_now();
        }
        assert!(h.join().is_ok());
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "values only move forward"
        );
        assert_eq!(seen.len() as u64 + mb.overwritten(), 1000);
    }
}
