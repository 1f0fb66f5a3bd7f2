//! Spare byte buffers: a frame's big buffers are handed back once their bytes are written and taken again for the next frame, rather than freed and allocated anew.
//!
//! Why: an allocator keeps a freed big buffer resident for a while (glibc in the freeing
//! thread's arena until it is trimmed; mimalloc purges it a second later) while the next frame,
//! read on another thread, allocates fresh memory elsewhere. Under many clients that
//! retention was a third of the router's RSS. A few reused buffers, [`SPARE_BYTES`] at most in
//! total (enough for the frames the budget lets through, their enriched copies and an output's
//! reads), replace it; what is in use stays bounded by the frame budget and the buffer's
//! in-flight bytes, as before. Spares left untouched for a while are freed ([`Spares::trim`]),
//! so an idle router goes back to its idle footprint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

/// Most bytes of capacity kept spare.
pub const SPARE_BYTES: usize = 8 * 1024 * 1024;
/// Smaller buffers are not worth keeping: the allocator reuses those at once.
pub const MIN_SPARE_BYTES: usize = 64 * 1024;
/// How often unused spares are freed: those not taken since the previous tick go.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Shared, cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Spares {
    inner: Arc<Mutex<Vec<Vec<u8>>>>,
    /// A spare was taken since the last [`Spares::trim`].
    used: Arc<AtomicBool>,
}

// === impl Spares ===

impl Spares {
    /// An empty buffer with room for at least `min` bytes: the smallest spare that fits, else a
    /// new one.
    pub fn take(&self, min: usize) -> Vec<u8> {
        if min >= MIN_SPARE_BYTES
            && let Ok(mut spares) = self.inner.lock()
        {
            let best = spares
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= min)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                self.used.store(true, Ordering::Relaxed);
                return spares.swap_remove(i);
            }
        }
        Vec::with_capacity(min)
    }

    /// Keeps `v`'s memory for a later [`Spares::take`] (or frees it when enough is kept).
    pub fn give(&self, mut v: Vec<u8>) {
        let cap = v.capacity();
        if !(MIN_SPARE_BYTES..=SPARE_BYTES).contains(&cap) {
            return;
        }
        v.clear();
        let Ok(mut spares) = self.inner.lock() else {
            return;
        };
        let kept: usize = spares.iter().map(Vec::capacity).sum();
        if kept + cap <= SPARE_BYTES {
            spares.push(v);
        } else if let Some(i) = spares
            .iter()
            .enumerate()
            .filter(|(_, s)| s.capacity() < cap && kept - s.capacity() + cap <= SPARE_BYTES)
            .min_by_key(|(_, s)| s.capacity())
            .map(|(i, _)| i)
        {
            // bigger buffers fit more frames: keep this one instead of a smaller spare
            spares[i] = v;
        }
    }

    /// [`Spares::give`] of the memory under `b` when nothing else shares it.
    pub fn give_bytes(&self, mut b: Bytes) {
        if b.is_unique() {
            // Only the memory is wanted. The conversion moves the bytes left to the front of
            // their memory: cut them to one first, so that it moves one byte, not a frame.
            // (Not to none: an empty `Bytes` lets its memory go.)
            b.truncate(1);
            self.give(Vec::from(b));
        }
    }

    /// Frees every spare unless one was taken since the previous call (for a periodic task).
    pub fn trim(&self) {
        if !self.used.swap(false, Ordering::Relaxed)
            && let Ok(mut spares) = self.inner.lock()
        {
            spares.clear();
            spares.shrink_to_fit();
        }
    }

    /// Frees spares nobody took for [`TRIM_INTERVAL`], every [`TRIM_INTERVAL`], until dropped.
    pub async fn trim_every_interval(self) {
        let mut tick = tokio::time::interval(TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.trim();
        }
    }

    /// Bytes of capacity kept spare.
    pub fn kept(&self) -> usize {
        self.inner
            .lock()
            .map_or(0, |s| s.iter().map(Vec::capacity).sum())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn spares_are_reused_and_bounded() {
        let spares = Spares::default();
        let v = spares.take(100_000);
        let ptr = v.as_ptr();
        spares.give(v);
        let again = spares.take(90_000);
        assert_eq!(again.as_ptr(), ptr, "the spare is reused");
        drop(again);
        assert_eq!(spares.kept(), 0);
        for _ in 0..10 {
            spares.give(Vec::with_capacity(1024 * 1024));
        }
        assert!(spares.kept() <= SPARE_BYTES);
        assert!(spares.kept() >= SPARE_BYTES - 1024 * 1024);
        spares.give(Vec::with_capacity(1024));
        spares.give(Vec::with_capacity(SPARE_BYTES + 1));
        assert!(spares.kept() <= SPARE_BYTES, "too small or too big: freed");
        // a shared frame's memory comes back once its last part is dropped
        let spares = Spares::default();
        let b = Bytes::from(vec![7u8; 200_000]);
        let part = b.slice(10..20);
        spares.give_bytes(b);
        assert_eq!(spares.kept(), 0, "still shared");
        spares.give_bytes(part);
        assert!(spares.kept() >= 200_000);
        // kept while in use, freed once unused for a trim interval
        let taken = spares.take(100_000);
        spares.give(taken);
        spares.trim();
        assert!(spares.kept() >= 200_000, "taken since the last trim");
        spares.trim();
        assert_eq!(spares.kept(), 0, "untouched since the last trim");
    }
}
