//! The service scheduler: keeps `desiredCount` tasks running, replacing stopped ones with
//! back-off, and rolls tasks onto a new plan within `minimumHealthyPercent`/`maximumPercent`.

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
    /// The last few events, newest last, like `aws ecs describe-services` events.
    pub events: Vec<String>,
}

const MAX_EVENTS: usize = 10;

struct Scheduler {
    ctx: TaskContext,
    index: u8,
    plan: Arc<ServicePlan>,
    tasks: Vec<(TaskHandle, Instant)>,
    used_slots: BTreeSet<u8>,
    failures: u32,
    next_start: Instant,
    events: Vec<String>,
}

/// Runs the scheduler for one service until `shutdown` flips, then stops every task. A new
/// plan on `plans` starts a rolling deployment.
pub async fn run(
    ctx: TaskContext,
    mut plans: watch::Receiver<Arc<ServicePlan>>,
    index: u8,
    mut shutdown: watch::Receiver<bool>,
    state: watch::Sender<ServiceState>,
) {
    let plan = plans.borrow_and_update().clone();
    let mut s = Scheduler {
        ctx,
        index,
        plan,
        tasks: Vec::new(),
        used_slots: BTreeSet::new(),
        failures: 0,
        next_start: Instant::now(),
        events: Vec::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            changed = plans.changed() => {
                if changed.is_ok() {
                    s.plan = plans.borrow_and_update().clone();
                    s.event(format!("(service {}) has started a deployment", s.plan.name));
                    s.failures = 0;
                    s.next_start = Instant::now();
                }
            }
            _ = tick.tick() => {}
        }
        s.reap();
        s.schedule();
        state.send_replace(ServiceState {
            name: s.plan.name.clone(),
            desired_count: s.plan.desired_count,
            tasks: s
                .tasks
                .iter()
                .map(|(t, _)| t.info.borrow().clone())
                .collect(),
            events: s.events.clone(),
        });
    }

    // Shutdown: every task drains and stops at once, then we wait for all of them.
    for (t, _) in &mut s.tasks {
        t.request_stop("runner is shutting down");
    }
    for (t, _) in &mut s.tasks {
        t.wait().await;
    }
    state.send_modify(|st| st.tasks.clear());
}

// === impl Scheduler ===

impl Scheduler {
    fn event(&mut self, e: String) {
        self.events.push(e);
        if self.events.len() > MAX_EVENTS {
            self.events.remove(0);
        }
    }

    /// Removes stopped tasks; a task that failed by itself delays the next start (back-off).
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.tasks.len() {
            if !self.tasks[i].0.is_finished() {
                i += 1;
                continue;
            }
            let (handle, started) = self.tasks.swap_remove(i);
            let info = handle.info.borrow().clone();
            self.used_slots.remove(&info.ip.octets()[3]);
            let reason = match &info.status {
                TaskStatus::Stopped { reason } => reason.clone(),
                _ => "task ended".into(),
            };
            let short = info.id.get(..8).unwrap_or(&info.id).to_owned();
            if handle.stop_requested() {
                self.event(format!(
                    "(service {}) stopped task {short}: {reason}",
                    self.plan.name
                ));
                continue;
            }
            if started.elapsed() >= STABLE_AFTER {
                self.failures = 0;
            } else {
                self.failures = self.failures.saturating_add(1);
            }
            let delay = backoff(self.failures);
            self.next_start = Instant::now() + delay;
            tracing::warn!(service = %self.plan.name, task = %short, %reason, ?delay, "task stopped");
            self.event(format!(
                "(service {}) stopped task {short}: {reason}; replacing in {:.1}s",
                self.plan.name,
                delay.as_secs_f64()
            ));
        }
    }

    /// Starts and stops tasks towards `desiredCount` tasks of the current plan.
    fn schedule(&mut self) {
        let desired = self.plan.desired_count as usize;
        let checked = self
            .plan
            .containers
            .iter()
            .any(|c| c.essential && c.health_check.is_some());
        let current = |t: &TaskHandle, plan: &Arc<ServicePlan>| Arc::ptr_eq(&t.plan, plan);
        let live: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| !self.tasks[i].0.stop_requested())
            .collect();
        let new = live
            .iter()
            .filter(|&&i| current(&self.tasks[i].0, &self.plan))
            .count();
        let old: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| !current(&self.tasks[i].0, &self.plan))
            .collect();

        // ECS's deployment bounds: at most maximumPercent running, at least
        // minimumHealthyPercent serving while old tasks are replaced.
        let max_total = (desired * self.plan.maximum_percent as usize / 100).max(desired);
        let max_total = if old.is_empty() {
            desired
        } else {
            max_total.max(1)
        };
        let min_serving = (desired * self.plan.minimum_healthy_percent as usize).div_ceil(100);

        // Scale in: too many tasks of the current plan (desiredCount lowered).
        if old.is_empty() && new > desired {
            if let Some(&i) = live.last() {
                self.tasks[i].0.request_stop("service scaled in");
            }
            return;
        }
        // Start a task of the current plan when there is room.
        if new < desired && self.tasks.len() < max_total && Instant::now() >= self.next_start {
            self.start_task();
        }
        // Retire an old task when enough others serve without it: first the ones that do not
        // serve anyway, then serving ones while the serving count stays >= minimumHealthyPercent.
        if let Some(&i) = old.iter().find(|&&i| !self.tasks[i].0.serving(checked)) {
            self.tasks[i]
                .0
                .request_stop("deployment: replaced by a task of the new definition");
            return;
        }
        let serving = live
            .iter()
            .filter(|&&i| self.tasks[i].0.serving(checked))
            .count();
        let surplus = serving + old.len() > desired || new >= desired;
        if let Some(&i) = old.first()
            && serving > min_serving
            && surplus
        {
            self.tasks[i]
                .0
                .request_stop("deployment: replaced by a task of the new definition");
        } else if let Some(&i) = old.first()
            && min_serving == 0
            && self.tasks.len() >= max_total
        {
            // maximumPercent leaves no room to start first: stop first (minimumHealthy 0).
            self.tasks[i]
                .0
                .request_stop("deployment: replaced by a task of the new definition");
        }
    }

    fn start_task(&mut self) {
        let Some(slot) = (1..=254u8).find(|s| !self.used_slots.contains(s)) else {
            return;
        };
        self.used_slots.insert(slot);
        let ip = self.ctx.task_ip(self.index, slot);
        let handle = TaskHandle::start(self.ctx.clone(), self.plan.clone(), ip);
        self.tasks.push((handle, Instant::now()));
    }
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
