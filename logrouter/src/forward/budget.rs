//! The process-wide memory budget for Forward frames in flight: bytes a connection must hold permits for before reading a frame's body.
//!
//! Why a budget shared by every connection rather than a per-connection limit: `Buffer_Max_Size`
//! bounds one frame, not how many clients send one at once, so memory would grow with the number
//! of connections. With one budget, extra connections wait for permits before reading a body
//! (their clients see slower reads and no ack: back-pressure), and memory stays bounded.
//!
//! Deadlock freedom: a connection asks for all the permits a frame needs in one request, and only
//! while it holds none; permits are given back once the frame is buffered (and acked). So no
//! connection ever waits while holding permits another waiter needs.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits for the frame bytes one connection holds; dropping it gives them back.
pub type Reservation = OwnedSemaphorePermit;

/// Shared, cheap to clone.
#[derive(Debug, Clone)]
pub struct FrameBudget {
    sem: Arc<Semaphore>,
    total: usize,
}

// === impl FrameBudget ===

impl FrameBudget {
    /// A budget of `total` bytes (clamped to what a semaphore can count).
    pub fn new(total: usize) -> FrameBudget {
        let total = total.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        FrameBudget {
            sem: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// The whole budget: no frame may be larger.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Waits for `bytes` permits (FIFO, so a big frame is not starved by small ones); `None` if
    /// `bytes` exceeds the whole budget.
    pub async fn reserve(&self, bytes: usize) -> Option<Reservation> {
        if bytes > self.total {
            return None;
        }
        let n = u32::try_from(bytes.max(1)).ok()?;
        self.sem.clone().acquire_many_owned(n).await.ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn permits_come_back_when_a_reservation_is_dropped() {
        let budget = FrameBudget::new(1000);
        assert!(
            budget.reserve(1001).await.is_none(),
            "larger than the whole budget"
        );
        let a = budget.reserve(600).await.unwrap();
        assert_eq!(budget.available(), 400);
        // a second big frame waits for the first one's permits: not ready while they are held
        let waiting = budget.reserve(600);
        tokio::pin!(waiting);
        tokio::select! {
            biased;
            _ = &mut waiting => panic!("reserved beyond the budget"),
            () = std::future::ready(()) => {}
        }
        drop(a);
        let b = waiting.await.unwrap();
        assert_eq!(budget.available(), 400);
        drop(b);
        assert_eq!(budget.available(), budget.total());
    }
}
