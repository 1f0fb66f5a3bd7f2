//! heap: gives memory freed after a burst back to the OS.
//!
//! glibc keeps freed heap memory for reuse, so a sidecar that served 1,000 client connections
//! would stay at that peak RSS after they leave. Every few seconds, when the allocator holds
//! more than a couple of MiB free, `malloc_trim` hands those pages back (as Envoy's shrink-heap
//! overload action does with tcmalloc).

use std::time::Duration;

/// How often the free heap is looked at.
const PERIOD: Duration = Duration::from_secs(5);
/// Free heap below this stays with the allocator: not worth the page faults to get it back.
/// (glibc still counts trimmed pages as free, so a trim may repeat; one costs microseconds.)
const THRESHOLD: usize = 2 << 20;

/// Runs for the life of the process, on its runtime.
pub async fn trim_periodically() {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if trim_if_over(THRESHOLD) {
            tracing::trace!("returned free heap memory to the OS");
        }
    }
}

/// Trims the heap if more than `threshold` bytes of it are free; whether memory was returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_if_over(threshold: usize) -> bool {
    // SAFETY: `mallinfo2` and `malloc_trim` take no pointers from us; they read and adjust
    // glibc's own allocator state under its own locks, and may be called at any time.
    let free = unsafe { libc::mallinfo2() }.fordblks;
    free >= threshold && unsafe { libc::malloc_trim(0) } == 1
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_if_over(_threshold: usize) -> bool {
    false
}

#[cfg(test)]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn freed_heap_goes_back_to_the_os() {
        // 64 MiB in small blocks (below the mmap threshold: on the heap), written so that
        // they are resident, then a small block above them that keeps the heap's top in use.
        let blocks: Vec<Vec<u8>> = (0..16_384).map(|_| vec![1u8; 4096]).collect();
        let pin = vec![1u8; 64];
        let full = rss_kib();
        drop(blocks);
        assert!(trim_if_over(THRESHOLD), "64 MiB free is over the threshold");
        let trimmed = rss_kib();
        assert!(
            trimmed + 32 * 1024 < full,
            "RSS {full} KiB before, {trimmed} KiB after trimming"
        );
        drop(pin);
    }
}
