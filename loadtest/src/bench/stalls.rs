//! Host stalls: when the machine itself stopped running one of the benchmark's cores.
//!
//! On a VM the host may leave a vCPU unrun for milliseconds: on this project's machines a
//! thread sleeping 2 ms at a time woke 3–47 ms late a few times a minute, with the guest's
//! scheduler showing the core idle in between (`perf sched timehist`). Every request in
//! flight then takes that long, whatever the proxy does. A probe thread per core, pinned and
//! at a real-time priority above everything the benchmark runs, sleeps [`PERIOD`] at a time
//! and keeps each wake-up that came more than [`LATE`] after it was due: nothing in the guest
//! at a lower priority can hold it back, so what delays it is the host (or a kernel section
//! that cannot be preempted). [`attribute`] then takes each slow request's overlap with the
//! stalls out of its latency; the worst that remains is the row's own.
//!
//! Without a real-time priority (not root, no `CAP_SYS_NICE`) the probe would also see the
//! proxy's own delays, so it does not run and nothing is attributed to the host.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;

use super::process;
use crate::load::SlowRequests;

/// How long the probe sleeps between looks: a stall longer than `PERIOD + LATE` cannot fall
/// between two of them unseen.
pub const PERIOD: Duration = Duration::from_millis(1);
/// A wake-up this much later than due is a stall (from when it was due to when it came: the
/// part before is not counted, so a stall is taken out of a request at its shortest).
pub const LATE: Duration = Duration::from_micros(300);
/// The probe's `SCHED_FIFO` priority: above the benchmark's own real-time processes.
pub const PRIORITY: u8 = 2;
/// Stalls kept per core; a host stalling more often than this is reported as it is.
const MAX_STALLS: usize = 10_000;

/// A time `cpu` was not given back to its probe: from when the probe was due to when it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    pub cpu: usize,
    pub from: Instant,
    pub to: Instant,
}

// === impl Stall ===

impl Stall {
    fn micros(&self) -> u64 {
        u64::try_from(self.to.saturating_duration_since(self.from).as_micros()).unwrap_or(u64::MAX)
    }
}

/// One probe thread per core, running until [`StallProbe::stop`].
pub struct StallProbe {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Stall>>>,
}

// === impl StallProbe ===

impl StallProbe {
    /// Starts a probe on each of `cpus`, or says why it cannot (no real-time priority here).
    pub fn start(cpus: &[usize]) -> Result<StallProbe, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut probe = StallProbe {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for &cpu in cpus {
            let (ready, started) = std::sync::mpsc::channel();
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("skiff-stall-probe-{cpu}"))
                .spawn(move || {
                    let set_up = process::pin_current_thread(cpu).and_then(|()| {
                        process::set_realtime(process::current_thread_id()?, Some(PRIORITY), false)
                    });
                    let ok = set_up.is_ok();
                    let _ = ready.send(set_up);
                    if ok { watch(cpu, &stop) } else { Vec::new() }
                })
                .map_err(|error| format!("cannot start the stall probe: {error}"))?;
            probe.threads.push(thread);
            match started.recv() {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    probe.stop();
                    return Err(reason);
                }
                Err(_) => {
                    probe.stop();
                    return Err("the stall probe ended at once".into());
                }
            }
        }
        Ok(probe)
    }

    /// Stops every probe; the stalls they saw, per core in time order.
    pub fn stop(self) -> Vec<Stall> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|thread| thread.join().unwrap_or_default())
            .collect()
    }
}

fn watch(cpu: usize, stop: &AtomicBool) -> Vec<Stall> {
    let mut stalls = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let due = Instant::now() + PERIOD;
        std::thread::sleep(PERIOD);
        let woke = Instant::now();
        if woke.saturating_duration_since(due) > LATE && stalls.len() < MAX_STALLS {
            stalls.push(Stall {
                cpu,
                from: due,
                to: woke,
            });
        }
    }
    stalls
}

/// A latency phase's requests against the host's stalls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostStalls {
    /// Stalls seen on the cores the row uses.
    pub stalls: u64,
    /// The longest of them (µs).
    pub worst_us: u64,
    /// Requests (of those kept: every one in the benchmark) in flight during one of them.
    pub requests_in_stalls: u64,
    /// p99 of every request's latency with the stall time it overlapped taken out (µs); only
    /// when every request was kept. Over rounds: the median, as the other percentiles.
    pub p99_without_stalls_us: Option<u64>,
    /// The slowest request with the stall time it overlapped taken out (µs): the row's own
    /// worst.
    pub max_without_stalls_us: u64,
}

// === impl HostStalls ===

impl HostStalls {
    /// Several rounds as one: counts summed, the worst of the worsts, the median p99 (of the
    /// rounds that have one; the lower middle of an even count).
    pub fn combine(rounds: impl IntoIterator<Item = HostStalls>) -> HostStalls {
        let rounds: Vec<HostStalls> = rounds.into_iter().collect();
        let mut p99s: Vec<u64> = rounds
            .iter()
            .filter_map(|r| r.p99_without_stalls_us)
            .collect();
        p99s.sort_unstable();
        let p99_without_stalls_us =
            (p99s.len() == rounds.len() && !p99s.is_empty()).then(|| p99s[(p99s.len() - 1) / 2]);
        rounds.into_iter().fold(
            HostStalls {
                p99_without_stalls_us,
                ..HostStalls::default()
            },
            |total, round| HostStalls {
                stalls: total.stalls + round.stalls,
                worst_us: total.worst_us.max(round.worst_us),
                requests_in_stalls: total.requests_in_stalls + round.requests_in_stalls,
                max_without_stalls_us: total.max_without_stalls_us.max(round.max_without_stalls_us),
                p99_without_stalls_us,
            },
        )
    }
}

/// `slow`'s requests against the stalls on `cpus`: how many were in flight during one, and the
/// slowest of all with the stall time it overlapped taken out (the stalls of several cores
/// merged first, so a stall of the whole host counts once). If some slow requests were not
/// kept, none can be cleared, so the row's worst is `max_us`, the run's own.
pub fn attribute(slow: &SlowRequests, stalls: &[Stall], cpus: &[usize], max_us: u64) -> HostStalls {
    let on_cores: Vec<&Stall> = stalls.iter().filter(|s| cpus.contains(&s.cpu)).collect();
    let mut spans: Vec<(Instant, Instant)> = on_cores.iter().map(|s| (s.from, s.to)).collect();
    spans.sort_unstable();
    let mut merged: Vec<(Instant, Instant)> = Vec::with_capacity(spans.len());
    for (from, to) in spans {
        match merged.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => merged.push((from, to)),
        }
    }
    let mut in_stalls = 0;
    let mut max_without_stalls_us = slow.max_below_us;
    // With every request kept (`over_us` 0), their percentiles too.
    let mut every = (slow.over_us == 0 && slow.not_kept == 0)
        .then(crate::load::report::new_histogram)
        .and_then(Result::ok);
    for request in &slow.kept {
        let overlap: Duration = merged
            .iter()
            .map(|(from, to)| {
                request
                    .done
                    .min(*to)
                    .saturating_duration_since(request.scheduled.max(*from))
            })
            .sum();
        if !overlap.is_zero() {
            in_stalls += 1;
        }
        let own = request
            .done
            .saturating_duration_since(request.scheduled)
            .saturating_sub(overlap);
        let own_us = u64::try_from(own.as_micros()).unwrap_or(u64::MAX);
        max_without_stalls_us = max_without_stalls_us.max(own_us);
        if let Some(every) = &mut every {
            every.saturating_record(own_us);
        }
    }
    if slow.not_kept > 0 {
        max_without_stalls_us = max_us;
    }
    HostStalls {
        stalls: on_cores.len() as u64,
        worst_us: on_cores.iter().map(|s| s.micros()).max().unwrap_or(0),
        requests_in_stalls: in_stalls,
        max_without_stalls_us,
        p99_without_stalls_us: every
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(0.99)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::SlowRequest;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    /// A request from ms `from` to ms `to` after `base`.
    fn request(base: Instant, from: u64, to: u64) -> SlowRequest {
        SlowRequest {
            scheduled: at(base, from),
            done: at(base, to),
        }
    }

    /// A stall of `cpu` from ms `from` to ms `to` after `base`.
    fn stall(cpu: usize, base: Instant, from: u64, to: u64) -> Stall {
        Stall {
            cpu,
            from: at(base, from),
            to: at(base, to),
        }
    }

    #[test]
    fn requests_in_flight_during_a_stall_on_a_used_core_are_the_hosts() {
        let t = Instant::now();
        let mut slow = SlowRequests::new(Duration::from_millis(1));
        slow.max_below_us = 900;
        // Through the stall on core 0 (ms 10–17); ends as it begins; starts after it; on core
        // 1's stall, which the row does not use; far from both.
        for (from, to) in [(8, 18), (4, 10), (17, 20), (30, 36), (50, 53)] {
            slow.kept.push(request(t, from, to));
        }
        let stalls = [stall(0, t, 10, 17), stall(1, t, 31, 35)];
        let core_0 = attribute(&slow, &stalls, &[0], 99_000);
        assert_eq!(
            core_0,
            HostStalls {
                stalls: 1,
                worst_us: 7_000,
                requests_in_stalls: 1,
                max_without_stalls_us: 6_000,
                // Only the slow requests were kept: no percentiles.
                p99_without_stalls_us: None,
            }
        );
        let both = attribute(&slow, &stalls, &[0, 1], 99_000);
        assert_eq!(
            (
                both.stalls,
                both.requests_in_stalls,
                both.max_without_stalls_us
            ),
            (2, 2, 6_000)
        );
        // The 10 ms request through the 7 ms stall was 3 ms on its own, as slow as the 3 ms one.
        slow.kept
            .retain(|r| r.done - r.scheduled != Duration::from_millis(6));
        slow.kept.retain(|r| r.scheduled != at(t, 17));
        let cleared = attribute(&slow, &stalls, &[0, 1], 99_000);
        assert_eq!(
            (cleared.requests_in_stalls, cleared.max_without_stalls_us),
            (1, 3_000)
        );
        slow.kept.retain(|r| r.scheduled != at(t, 50));
        assert_eq!(
            attribute(&slow, &stalls, &[0, 1], 99_000).max_without_stalls_us,
            3_000
        );
        // With no slow request at all, the worst is the fastest requests'.
        slow.kept.clear();
        assert_eq!(
            attribute(&slow, &stalls, &[0, 1], 99_000).max_without_stalls_us,
            900
        );
    }

    #[test]
    fn a_stall_seen_on_both_cores_is_taken_out_once() {
        let t = Instant::now();
        let mut slow = SlowRequests::new(Duration::from_millis(1));
        slow.kept.push(request(t, 0, 12));
        // The host stopped both vCPUs for ms 2–9 (seen 2–8 on one, 3–9 on the other).
        let stalls = [stall(0, t, 2, 8), stall(1, t, 3, 9)];
        let host = attribute(&slow, &stalls, &[0, 1], 12_000);
        assert_eq!((host.stalls, host.worst_us), (2, 6_000));
        assert_eq!(
            (host.requests_in_stalls, host.max_without_stalls_us),
            (1, 5_000)
        );
    }

    #[test]
    fn nothing_is_cleared_when_slow_requests_were_not_all_kept() {
        let t = Instant::now();
        let mut slow = SlowRequests::new(Duration::from_millis(1));
        slow.kept.push(request(t, 0, 9));
        slow.not_kept = 1;
        let stalls = [stall(0, t, 1, 8)];
        let host = attribute(&slow, &stalls, &[0], 12_345);
        assert_eq!(
            (host.requests_in_stalls, host.max_without_stalls_us),
            (1, 12_345)
        );
    }

    #[test]
    fn rounds_combine_into_sums_worsts_and_the_median_p99() {
        let round = |stalls, worst_us, requests_in_stalls, max, p99| HostStalls {
            stalls,
            worst_us,
            requests_in_stalls,
            max_without_stalls_us: max,
            p99_without_stalls_us: p99,
        };
        let combined = HostStalls::combine([
            round(1, 7_000, 3, 900, Some(400)),
            round(2, 4_000, 0, 1_800, Some(900)),
            round(0, 0, 0, 700, Some(500)),
        ]);
        assert_eq!(combined, round(3, 7_000, 3, 1_800, Some(500)));
        let one_without = HostStalls::combine([
            round(1, 7_000, 3, 900, Some(400)),
            round(0, 0, 0, 700, None),
        ]);
        assert_eq!(one_without.p99_without_stalls_us, None);
    }

    #[test]
    fn with_every_request_kept_the_p99_has_the_stalls_taken_out_too() {
        let t = Instant::now();
        let mut every = SlowRequests::new(Duration::ZERO);
        for i in 0..98 {
            let scheduled = at(t, i);
            every.record(
                200,
                SlowRequest {
                    scheduled,
                    done: scheduled + Duration::from_micros(200),
                },
            );
        }
        // Two requests of 10 ms through a 9.5 ms stall that began 1 ms into the first: 1 ms and
        // 0.5 ms on their own; the 99th of the 100 latencies is the 0.5 ms one.
        for i in [200, 201] {
            let scheduled = at(t, i);
            every.record(
                10_000,
                SlowRequest {
                    scheduled,
                    done: scheduled + Duration::from_millis(10),
                },
            );
        }
        let stalls = [Stall {
            cpu: 0,
            from: at(t, 201),
            to: at(t, 201) + Duration::from_micros(9_500),
        }];
        let host = attribute(&every, &stalls, &[0], 10_000);
        assert_eq!(host.p99_without_stalls_us, Some(500));
        assert_eq!(host.requests_in_stalls, 2);
        let no_stalls = attribute(&every, &[], &[0], 10_000);
        // (3 significant digits: 10 ms is recorded in a bucket that ends at 10.007 ms.)
        let as_measured = no_stalls.p99_without_stalls_us.unwrap();
        assert!((10_000..10_010).contains(&as_measured), "{as_measured}");
    }

    #[test]
    fn the_probe_sees_its_core_taken_away() {
        // Root here: the probe runs at a real-time priority; else it refuses, naming chrt.
        let probe = match StallProbe::start(&[0]) {
            Ok(probe) => probe,
            Err(reason) => {
                assert!(
                    reason.contains("chrt") || reason.contains("taskset"),
                    "{reason}"
                );
                return;
            }
        };
        // A thread above the probe's priority keeps core 0 for 30 ms: the probe's wake-up
        // due in that time comes at its end.
        let (taken, given_back) = std::thread::spawn(|| {
            process::pin_current_thread(0).unwrap();
            let tid = process::current_thread_id().unwrap();
            process::set_realtime(tid, Some(PRIORITY + 1), false).unwrap();
            let taken = Instant::now();
            while taken.elapsed() < Duration::from_millis(30) {
                std::hint::spin_loop();
            }
            let given_back = Instant::now();
            process::set_realtime(tid, None, false).unwrap();
            (taken, given_back)
        })
        .join()
        .unwrap();
        let stalls = probe.stop();
        let during: Vec<&Stall> = stalls
            .iter()
            .filter(|s| s.from < given_back && s.to > taken)
            .collect();
        assert!(
            during.iter().any(|s| s.cpu == 0 && s.micros() >= 20_000),
            "{stalls:?}"
        );
    }
}
