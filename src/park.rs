//! park: a sidecar waiting for a fast upstream polls for a moment instead of sleeping.
//!
//! When the sidecar's only thread has nothing to run, tokio puts it to sleep in `epoll_wait`,
//! and the upstream's response, arriving tens of microseconds later, has to wake it: the
//! scheduler, and on a virtual machine whose idle vCPUs do not halt-poll an inter-processor
//! interrupt and an exit to the host. Measured on the benchmark's VM, that sleep and wake is
//! most of the ~75 µs of CPU and much of the ~170 µs of latency a proxy adds per request at
//! 2,000 req/s (HAProxy and nginx alike). So just before the thread parks, while some request
//! sent upstream still waits for its response head ([`skiff_proxy::responses_awaited`]), it
//! polls the runtime's epoll descriptor(s) for up to `[proxy] busy_poll_us` and lets tokio
//! park only then — at once, if an event came in the meantime. (HAProxy's `busy-polling` spins
//! on every idle loop, always; this spins only while a response is due, and adapts.)
//!
//! It stops paying when upstreams are slow: every poll that runs out of time without an event
//! lowers a hit rate, and below one half only one park in [`PROBE_EVERY`] polls, to notice when
//! upstreams become fast again. An idle sidecar, or one waiting only for its clients, never
//! polls. Only a single-threaded runtime (the sidecar's default) is watched: with several
//! workers the one parked in `epoll_wait` is not the one this hook runs on.
//!
//! tokio does not expose its epoll descriptor, so [`RuntimeFds`] finds it as the event-poll
//! descriptors that building the runtime opened (`/proc/self/fd`); polling a descriptor that
//! is not the runtime's only ends a poll early.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::Duration;

use skiff_proxy::BusyPollMetrics;
use tokio::time::Instant;

/// At most this many descriptors are watched (tokio opens one or two per runtime).
const MAX_FDS: usize = 4;
/// Hit rate is kept in 1/256ths.
const ONE: u16 = 256;
/// With a hit rate under one half, one park in this many still polls (a probe).
pub const PROBE_EVERY: u32 = 64;

/// The runtime's event-poll descriptors, once found.
static FDS: OnceLock<Vec<RawFd>> = OnceLock::new();
/// Set once a sidecar runs with a non-zero `[proxy] busy_poll_us`; until then nothing polls.
static POLLING: OnceLock<Polling> = OnceLock::new();

/// How long a poll may last, and where polls are counted (`skiff_proxy_busy_poll*`).
struct Polling {
    budget: Duration,
    metrics: BusyPollMetrics,
}

thread_local! {
    static ADAPT: Cell<Adapt> = const { Cell::new(Adapt::new()) };
}

/// Event-poll descriptors open in this process at one moment.
pub struct RuntimeFds(BTreeSet<RawFd>);

impl RuntimeFds {
    /// Taken just before the runtime is built.
    pub fn before() -> RuntimeFds {
        RuntimeFds(event_poll_fds())
    }

    /// After the runtime is built: its descriptors are the new ones, watched from now on.
    /// When none, or implausibly many, were found, nothing ever polls (a debug line says so).
    pub fn watch_new(self) {
        let new = self.opened_since();
        if new.is_empty() || new.len() > MAX_FDS {
            tracing::debug!(found = ?new, "runtime's epoll not found: no busy polling");
            return;
        }
        let _ = FDS.set(new);
    }

    /// The event-poll descriptors opened since `self` was taken.
    fn opened_since(self) -> Vec<RawFd> {
        event_poll_fds().difference(&self.0).copied().collect()
    }
}

/// Turns polling on for up to `budget` per park (zero leaves it off), counted in `metrics`.
pub fn enable(budget: Duration, metrics: BusyPollMetrics) {
    if !budget.is_zero() {
        let _ = POLLING.set(Polling { budget, metrics });
    }
}

/// The runtime's park hook: polls while a response is awaited and polling pays.
pub fn before_park() {
    let (Some(polling), Some(fds)) = (POLLING.get(), FDS.get()) else {
        return;
    };
    if !skiff_proxy::responses_awaited() {
        return;
    }
    ADAPT.with(|cell| {
        let mut adapt = cell.get();
        if adapt.should_poll() {
            let (event, spent) = poll_until_ready(fds, polling.budget);
            adapt.record(event);
            let outcome = if event {
                &polling.metrics.event
            } else {
                &polling.metrics.timeout
            };
            outcome.inc();
            polling.metrics.seconds.inc_by(spent.as_secs_f64());
        }
        cell.set(adapt);
    });
}

/// Polls `fds` without blocking until one is readable (true) or `budget` has passed (false);
/// with the time it took.
pub fn poll_until_ready(fds: &[RawFd], budget: Duration) -> (bool, Duration) {
    let mut set = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; MAX_FDS];
    let n = fds.len().min(MAX_FDS);
    for (slot, &fd) in set.iter_mut().zip(fds) {
        slot.fd = fd;
    }
    let start = Instant::now();
    loop {
        let ready = poll_once(&mut set[..n]);
        let spent = start.elapsed();
        if ready || spent >= budget {
            return (ready, spent);
        }
        std::hint::spin_loop();
    }
}

/// One `poll(2)` with a zero timeout: whether any descriptor is readable.
#[allow(unsafe_code)]
fn poll_once(set: &mut [libc::pollfd]) -> bool {
    // `set.len()` is at most MAX_FDS.
    let len = set.len() as libc::nfds_t;
    // SAFETY: `set` is a valid, exclusively borrowed array of `len` pollfd structs, which
    // poll(2) only reads and writes within; a zero timeout never blocks.
    let ready = unsafe { libc::poll(set.as_mut_ptr(), len, 0) };
    ready > 0
}

/// The event-poll descriptors open in this process.
fn event_poll_fds() -> BTreeSet<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return BTreeSet::new();
    };
    dir.flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventpoll]")
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether polling has been paying: a hit rate over recent polls.
#[derive(Clone, Copy, Debug)]
pub struct Adapt {
    /// Recent polls that saw an event before their budget ran out, in 1/256ths (an
    /// exponentially weighted average, 1/8 per poll).
    hit_rate: u16,
    /// Parks skipped since the last probe while the hit rate is low.
    skipped: u32,
}

impl Adapt {
    pub const fn new() -> Adapt {
        Adapt {
            hit_rate: ONE,
            skipped: 0,
        }
    }

    /// Whether this park polls: always while most polls see an event, else one in
    /// [`PROBE_EVERY`].
    pub fn should_poll(&mut self) -> bool {
        if self.hit_rate >= ONE / 2 {
            return true;
        }
        self.skipped += 1;
        if self.skipped < PROBE_EVERY {
            return false;
        }
        self.skipped = 0;
        true
    }

    /// The outcome of a poll: an event before the budget ran out, or not.
    pub fn record(&mut self, hit: bool) {
        if hit {
            self.hit_rate += (ONE - self.hit_rate) / 8;
        } else {
            self.hit_rate -= self.hit_rate.div_ceil(8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of `parks` parks poll, each poll's outcome given by `hit`.
    fn polls(adapt: &mut Adapt, parks: u32, hit: bool) -> u32 {
        (0..parks)
            .filter(|_| {
                let polled = adapt.should_poll();
                if polled {
                    adapt.record(hit);
                }
                polled
            })
            .count() as u32
    }

    #[test]
    fn polling_continues_while_it_pays_backs_off_when_it_does_not_and_recovers() {
        let mut adapt = Adapt::new();
        assert_eq!(
            polls(&mut adapt, 1000, true),
            1000,
            "every park polls while polls hit"
        );
        // An upstream turns slow: a few misses, then only probes.
        let first = polls(&mut adapt, 100, false);
        assert!(
            (6..=16).contains(&first),
            "{first} polls in the first 100 misses"
        );
        let later = polls(&mut adapt, 100 * PROBE_EVERY, false);
        assert_eq!(later, 100, "only probes while polls miss");
        // It turns fast again: a probe hits, and within a few probes every park polls.
        let recovering = polls(&mut adapt, 20 * PROBE_EVERY, true);
        assert!(
            recovering > 5 * PROBE_EVERY,
            "{recovering} polls while recovering"
        );
        assert_eq!(polls(&mut adapt, 100, true), 100);
        // Three polls in four hitting keeps every park polling; one in four backs off.
        for _ in 0..500 {
            assert_eq!(polls(&mut adapt, 3, true) + polls(&mut adapt, 1, false), 4);
        }
        for _ in 0..100 {
            polls(&mut adapt, 1, true);
            polls(&mut adapt, 3, false);
        }
        assert!(polls(&mut adapt, 4 * PROBE_EVERY, false) <= 4);
    }

    #[test]
    fn the_runtimes_epoll_is_found_and_a_poll_ends_on_its_event_or_its_budget() {
        let before = RuntimeFds::before();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let fds = before.opened_since();
        assert!(
            (1..=MAX_FDS).contains(&fds.len()),
            "the runtime's epoll descriptors: {fds:?}"
        );
        let quiet = |fds: &[RawFd]| !poll_until_ready(fds, Duration::ZERO).0;
        let receiver = runtime.block_on(async {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            // Registered with the runtime's epoll: the runtime takes in the registration's
            // events each time this task yields, until nothing is pending.
            for _ in 0..100 {
                if quiet(&fds) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            socket
        });
        // A quiet runtime: the poll runs out its budget.
        assert!(quiet(&fds), "events still pending on the runtime's epoll");
        assert!(!poll_until_ready(&fds, Duration::from_millis(2)).0);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .send_to(b"x", receiver.local_addr().unwrap())
            .unwrap();
        // A datagram for a registered socket: the poll ends on it, however long its budget.
        let (ready, _) = poll_until_ready(&fds, Duration::from_secs(600));
        assert!(ready, "the datagram made the runtime's epoll readable");
    }
}
