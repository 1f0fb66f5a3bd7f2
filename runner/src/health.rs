//! Container health checks with ECS's semantics: CMD / CMD-SHELL, interval, timeout, retries, startPeriod.

use std::collections::BTreeMap;
use std::process::Stdio;

use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};

use crate::plan::{HealthCheckPlan, HealthCommand};

/// A container's health, as `docker inspect` and ECS report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
}

/// Runs the check until `stop` resolves, publishing each transition on `tx`.
///
/// ECS rules: failures inside `startPeriod` do not count, a success inside it makes the container
/// healthy at once; after it, `retries` consecutive failures make it unhealthy, one success healthy.
pub async fn run(
    plan: HealthCheckPlan,
    wrap: Vec<String>,
    argv0: impl Fn(&str) -> String,
    env: BTreeMap<String, String>,
    tx: watch::Sender<Health>,
) {
    let started = Instant::now();
    let mut failures = 0u32;
    let mut next = started;
    loop {
        sleep_until(next).await;
        next += plan.interval;
        let ok = probe(&plan, &wrap, &argv0, &env).await;
        let in_grace = started.elapsed() < plan.start_period;
        let current = *tx.borrow();
        let new = if ok {
            failures = 0;
            Health::Healthy
        } else if in_grace {
            current
        } else {
            failures += 1;
            if failures >= plan.retries {
                Health::Unhealthy
            } else {
                current
            }
        };
        if new != current {
            tracing::debug!(?new, "container health changed");
            tx.send_replace(new);
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Runs the check once; `wrap` prefixes the command (e.g. `ip netns exec NS` in awsvpc mode).
async fn probe(
    plan: &HealthCheckPlan,
    wrap: &[String],
    argv0: &impl Fn(&str) -> String,
    env: &BTreeMap<String, String>,
) -> bool {
    let mut argv: Vec<String> = wrap.to_vec();
    match &plan.command {
        HealthCommand::Exec(cmd) => {
            let Some((program, args)) = cmd.split_first() else {
                return false;
            };
            argv.push(argv0(program));
            argv.extend(args.iter().cloned());
        }
        HealthCommand::Shell(script) => {
            argv.extend(["/bin/sh".to_owned(), "-c".to_owned(), script.clone()]);
        }
    }
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    match timeout(plan.timeout, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plan(command: HealthCommand, retries: u32, start_period: Duration) -> HealthCheckPlan {
        HealthCheckPlan {
            command,
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
            retries,
            start_period,
        }
    }

    async fn wait_for(rx: &mut watch::Receiver<Health>, want: Health) {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|h| *h == want))
            .await
            .expect("health did not reach the expected state")
            .expect("checker stopped");
    }

    #[tokio::test]
    async fn passing_command_is_healthy() {
        let (tx, mut rx) = watch::channel(Health::Unknown);
        let p = plan(HealthCommand::Exec(vec!["true".into()]), 3, Duration::ZERO);
        let task = tokio::spawn(run(p, Vec::new(), |s| s.to_owned(), BTreeMap::new(), tx));
        wait_for(&mut rx, Health::Healthy).await;
        task.abort();
    }

    #[tokio::test]
    async fn failing_shell_turns_unhealthy_after_retries() {
        let (tx, mut rx) = watch::channel(Health::Unknown);
        let p = plan(HealthCommand::Shell("exit 1".into()), 2, Duration::ZERO);
        let task = tokio::spawn(run(p, Vec::new(), |s| s.to_owned(), BTreeMap::new(), tx));
        wait_for(&mut rx, Health::Unhealthy).await;
        task.abort();
    }

    #[tokio::test]
    async fn missing_program_is_a_failure_not_a_crash() {
        let (tx, mut rx) = watch::channel(Health::Unknown);
        let p = plan(
            HealthCommand::Exec(vec!["/nonexistent/skiff-probe".into()]),
            1,
            Duration::ZERO,
        );
        let task = tokio::spawn(run(p, Vec::new(), |s| s.to_owned(), BTreeMap::new(), tx));
        wait_for(&mut rx, Health::Unhealthy).await;
        task.abort();
    }
}
