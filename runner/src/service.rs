//! The service scheduler: keeps `desiredCount` tasks running, replacing stopped ones with back-off.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::plan::ServicePlan;
use crate::task::{TaskContext, TaskHandle, TaskInfo, TaskStatus};

/// First delay before replacing a task that failed; doubles per failure up to the cap (ECS throttles
/// tasks that keep failing to start the same way).
pub const RESTART_BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A task that ran this long resets the back-off.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// What `skiff ps` and the published ports see of a service.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceState {
    pub name: String,
    pub desired_count: u32,
    pub tasks: Vec<TaskInfo>,
    /// The last few stop reasons, newest last, like `aws ecs describe-services` events.
    pub events: Vec<String>,
}

const MAX_EVENTS: usize = 10;

/// Runs the scheduler for one service until `shutdown` flips, then stops every task.
pub async fn run(
    ctx: TaskContext,
    plan: Arc<ServicePlan>,
    index: u8,
    mut shutdown: watch::Receiver<bool>,
    state: watch::Sender<ServiceState>,
) {
    let mut tasks: Vec<(TaskHandle, Instant)> = Vec::new();
    let mut used_slots: BTreeSet<u8> = BTreeSet::new();
    let mut failures = 0u32;
    let mut next_start = Instant::now();
    let mut events: Vec<String> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));

    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        // Reap stopped tasks.
        let mut i = 0;
        while i < tasks.len() {
            if tasks[i].0.is_finished() {
                let (handle, started) = tasks.swap_remove(i);
                let info = handle.info.borrow().clone();
                used_slots.remove(&info.ip.octets()[3]);
                let reason = match &info.status {
                    TaskStatus::Stopped { reason } => reason.clone(),
                    _ => "task ended".into(),
                };
                if started.elapsed() >= STABLE_AFTER {
                    failures = 0;
                } else {
                    failures = failures.saturating_add(1);
                }
                let delay = backoff(failures);
                next_start = Instant::now() + delay;
                let event = format!(
                    "(service {}) stopped task {}: {reason}; replacing in {:.1}s",
                    plan.name,
                    &info.id[..8],
                    delay.as_secs_f64()
                );
                tracing::warn!(service = %plan.name, task = &info.id[..8], %reason, ?delay, "task stopped");
                events.push(event);
                if events.len() > MAX_EVENTS {
                    events.remove(0);
                }
            } else {
                i += 1;
            }
        }
        // Start missing tasks (one per tick once the back-off allows).
        if (tasks.len() as u32) < plan.desired_count
            && Instant::now() >= next_start
            && let Some(slot) = (1..=254u8).find(|s| !used_slots.contains(s))
        {
            used_slots.insert(slot);
            let ip = ctx.task_ip(index, slot);
            let handle = TaskHandle::start(ctx.clone(), plan.clone(), ip);
            tasks.push((handle, Instant::now()));
        }
        let snapshot: Vec<TaskInfo> = tasks.iter().map(|(t, _)| t.info.borrow().clone()).collect();
        state.send_replace(ServiceState {
            name: plan.name.clone(),
            desired_count: plan.desired_count,
            tasks: snapshot,
            events: events.clone(),
        });
    }

    // Shutdown: every task drains and stops at once, then we wait for all of them.
    for (t, _) in &mut tasks {
        t.request_stop("runner is shutting down");
    }
    for (t, _) in &mut tasks {
        t.wait().await;
    }
    state.send_modify(|s| s.tasks.clear());
}

fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = RESTART_BACKOFF_BASE.saturating_mul(1u32 << (failures - 1).min(16));
    exp.min(RESTART_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(40), RESTART_BACKOFF_MAX);
    }
}
