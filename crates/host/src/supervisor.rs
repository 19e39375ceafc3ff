//! [`Supervisor`]: keeps one plugin running. It starts the plugin, runs a set-up hook on
//! each new instance (give it its host services there), watches it, and when it exits or
//! stops answering its health checks, restarts it per a [`RestartPolicy`]: with
//! exponential backoff, and only so many times in a window before it gives up and marks
//! the plugin failed.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use crate::builder::PluginBuilder;
use crate::client::{PluginClient, PluginExit, Stop};

/// When to restart a plugin that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Never: the supervisor stops with the plugin.
    Never,
    /// When it failed: it exited with a non-zero status or a signal, failed to start, or
    /// hung. A plugin that exits with status 0 stays stopped.
    OnFailure,
    /// Whenever it ends.
    Always,
}

/// How a [`Supervisor`] restarts its plugin and decides it is hung.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// When to restart.
    pub restart: Restart,
    /// The wait before the first restart; it doubles with each restart in a row.
    pub initial_backoff: Duration,
    /// The longest wait between restarts.
    pub max_backoff: Duration,
    /// Restarts allowed within `window`; one more and the plugin is marked failed.
    pub max_restarts: u32,
    /// The window over which restarts are counted.
    pub window: Duration,
    /// How often to check the plugin's health (`None`: never; a hang goes unnoticed).
    pub health_interval: Option<Duration>,
    /// How long one health check may take.
    pub health_timeout: Duration,
    /// Failed health checks in a row after which the plugin is hung: its process group is
    /// killed, and the policy decides on a restart.
    pub unhealthy_after: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            restart: Restart::OnFailure,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_restarts: 5,
            window: Duration::from_secs(60),
            health_interval: Some(Duration::from_secs(5)),
            health_timeout: Duration::from_secs(2),
            unhealthy_after: 2,
        }
    }
}

/// Where a supervised plugin is.
#[derive(Debug, Clone)]
pub enum State {
    /// Starting an instance (the first, or a restart).
    Starting {
        /// Restarts so far.
        restarts: u32,
    },
    /// An instance runs and its set-up hook has succeeded.
    Running {
        /// The instance.
        plugin: Arc<PluginClient>,
        /// Restarts so far.
        restarts: u32,
    },
    /// The last instance ended; the next starts after `delay`.
    Backoff {
        /// Restarts so far.
        restarts: u32,
        /// The wait before the next start.
        delay: Duration,
        /// How the last instance ended.
        reason: String,
    },
    /// Too many restarts in the window: the supervisor gave up.
    Failed {
        /// Restarts made.
        restarts: u32,
        /// How the last instance ended.
        reason: String,
    },
    /// Stopped: by [`Supervisor::shutdown`], or because the policy does not restart.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// Why [`Supervisor::plugin`] has no plugin to give.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SupervisorError {
    /// The supervisor gave up after too many restarts.
    #[error("plugin `{plugin}` is marked failed after {restarts} restarts: {reason}")]
    Failed {
        /// The plugin's name.
        plugin: String,
        /// Restarts made.
        restarts: u32,
        /// How its last instance ended.
        reason: String,
    },
    /// The supervisor has stopped.
    #[error("plugin `{plugin}` is stopped: {reason}")]
    Stopped {
        /// The plugin's name.
        plugin: String,
        /// Why.
        reason: String,
    },
}

/// The error a set-up hook may return.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// What a set-up hook returns: a value kept as long as the instance runs (for example the
/// plugin's host-service connection).
pub type Setup<T> = Pin<Box<dyn Future<Output = Result<T, SetupError>> + Send>>;

type Hook<T> = Arc<dyn Fn(Arc<PluginClient>) -> Setup<T> + Send + Sync>;
type Factory = Arc<dyn Fn() -> PluginBuilder + Send + Sync>;

/// Keeps one plugin running; see the module docs.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use tether_host::{PluginClient, RestartPolicy, Supervisor};
///
/// let supervisor = Supervisor::start(
///     "worker",
///     || PluginClient::builder("worker", "./worker"),
///     RestartPolicy::default(),
///     // Each new instance: give it its host services here, e.g.
///     // `Box::pin(async move { Ok(services.connect(&plugin).await?) })`.
///     |_plugin| Box::pin(async { Ok(()) }),
/// );
/// let plugin = supervisor.plugin().await?; // the running instance
/// plugin.health().await?;
/// supervisor.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Supervisor {
    name: String,
    state: watch::Receiver<State>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Option<PluginExit>>,
}

impl Supervisor {
    /// Starts supervising: `factory` makes the builder for each instance, `setup` runs on
    /// each new instance before it counts as running (its result is kept until the
    /// instance ends; an error ends the instance as a failure).
    pub fn start<T, F, S>(name: &str, factory: F, policy: RestartPolicy, setup: S) -> Supervisor
    where
        T: Send + 'static,
        F: Fn() -> PluginBuilder + Send + Sync + 'static,
        S: Fn(Arc<PluginClient>) -> Setup<T> + Send + Sync + 'static,
    {
        let (state_sender, state) = watch::channel(State::Starting { restarts: 0 });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(supervise(
            name.to_owned(),
            Arc::new(factory),
            policy,
            Arc::new(setup) as Hook<T>,
            state_sender,
            stopped,
        ));
        Supervisor {
            name: name.to_owned(),
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Where the plugin is now.
    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Every change of state, as it happens.
    pub fn watch(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// The running instance, waiting while one starts or backs off; an error once the
    /// supervisor has failed or stopped.
    pub async fn plugin(&self) -> Result<Arc<PluginClient>, SupervisorError> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                State::Running { plugin, .. } => return Ok(Arc::clone(plugin)),
                State::Failed { restarts, reason } => {
                    return Err(SupervisorError::Failed {
                        plugin: self.name.clone(),
                        restarts: *restarts,
                        reason: reason.clone(),
                    });
                }
                State::Stopped { reason } => {
                    return Err(SupervisorError::Stopped {
                        plugin: self.name.clone(),
                        reason: reason.clone(),
                    });
                }
                State::Starting { .. } | State::Backoff { .. } => {}
            }
            if state.changed().await.is_err() {
                return Err(SupervisorError::Stopped {
                    plugin: self.name.clone(),
                    reason: "the supervisor ended".to_owned(),
                });
            }
        }
    }

    /// Stops supervising and stops the plugin (gracefully when no one else holds its
    /// client, else by killing its process group); how the running instance ended, if one
    /// was running.
    pub async fn shutdown(mut self) -> Option<PluginExit> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.ok().flatten()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // The running instance is killed when its last client handle goes.
        self.task.abort();
    }
}

/// How an instance ended.
struct End {
    failed: bool,
    reason: String,
}

async fn supervise<T: Send + 'static>(
    name: String,
    factory: Factory,
    policy: RestartPolicy,
    setup: Hook<T>,
    state: watch::Sender<State>,
    mut stop: oneshot::Receiver<()>,
) -> Option<PluginExit> {
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let mut restarts = 0u32;
    let mut backoff = policy.initial_backoff;
    loop {
        state.send_replace(State::Starting { restarts });
        let started = tokio::select! {
            started = factory().start() => started,
            _ = &mut stop => {
                state.send_replace(State::Stopped { reason: "shut down".to_owned() });
                return None;
            }
        };
        let end = match started {
            Err(err) => End {
                failed: true,
                reason: format!("it did not start: {err}"),
            },
            Ok(client) => {
                let client = Arc::new(client);
                match run(&name, &client, &policy, &setup, &state, restarts, &mut stop).await {
                    Some(end) => end,
                    None => {
                        // The state holds a handle too: replace it first, so that the
                        // stop can be graceful.
                        state.send_replace(State::Stopped {
                            reason: "shut down".to_owned(),
                        });
                        return stop_instance(client).await;
                    }
                }
            }
        };
        let restart = match policy.restart {
            Restart::Never => false,
            Restart::OnFailure => end.failed,
            Restart::Always => true,
        };
        if !restart {
            tracing::info!(target: "tether::supervisor", plugin = name, reason = end.reason, "plugin ended; not restarting it");
            state.send_replace(State::Stopped { reason: end.reason });
            return None;
        }
        let now = Instant::now();
        recent.retain(|at| now.duration_since(*at) < policy.window);
        if recent.len() >= policy.max_restarts as usize {
            tracing::error!(target: "tether::supervisor", plugin = name, restarts, reason = end.reason,
                "plugin restarted too often; marking it failed");
            state.send_replace(State::Failed {
                restarts,
                reason: end.reason,
            });
            return None;
        }
        recent.push_back(now);
        crate::metric::restarting(&name);
        tracing::warn!(target: "tether::supervisor", plugin = name, reason = end.reason, delay = ?backoff, "restarting the plugin");
        state.send_replace(State::Backoff {
            restarts,
            delay: backoff,
            reason: end.reason,
        });
        tokio::select! {
            () = sleep(backoff) => {}
            _ = &mut stop => {
                state.send_replace(State::Stopped { reason: "shut down".to_owned() });
                return None;
            }
        }
        backoff = (backoff * 2).min(policy.max_backoff);
        restarts += 1;
    }
}

/// Runs one instance until it ends (`Some`) or the supervisor is told to stop (`None`).
async fn run<T>(
    name: &str,
    client: &Arc<PluginClient>,
    policy: &RestartPolicy,
    setup: &Hook<T>,
    state: &watch::Sender<State>,
    restarts: u32,
    stop: &mut oneshot::Receiver<()>,
) -> Option<End> {
    let kept = tokio::select! {
        kept = setup(Arc::clone(client)) => kept,
        report = client.exited() => return Some(End { failed: true, reason: report.to_string() }),
        _ = &mut *stop => return None,
    };
    let _kept = match kept {
        Ok(kept) => kept,
        Err(err) => {
            client.kill();
            let _ = client.exited().await;
            return Some(End {
                failed: true,
                reason: format!("its set-up failed: {err}"),
            });
        }
    };
    state.send_replace(State::Running {
        plugin: Arc::clone(client),
        restarts,
    });
    tokio::select! {
        report = client.exited() => Some(End {
            failed: !report.status.success(),
            reason: report.to_string(),
        }),
        () = hung(client, policy) => {
            tracing::warn!(target: "tether::supervisor", plugin = name, pid = client.pid(),
                "plugin failed its health checks; killing its process group");
            client.kill();
            let report = client.exited().await;
            Some(End { failed: true, reason: format!("it stopped answering its health checks ({report})") })
        }
        _ = &mut *stop => None,
    }
}

/// Returns once `client` has failed `unhealthy_after` health checks in a row.
async fn hung(client: &PluginClient, policy: &RestartPolicy) {
    let Some(interval) = policy.health_interval else {
        return std::future::pending().await;
    };
    let mut failures = 0;
    loop {
        sleep(interval).await;
        match timeout(policy.health_timeout, client.health()).await {
            Ok(Ok(())) => failures = 0,
            _ => {
                failures += 1;
                if failures >= policy.unhealthy_after.max(1) {
                    return;
                }
            }
        }
    }
}

/// Stops an instance: gracefully if the supervisor holds the only handle, else by killing
/// its process group (callers' calls then fail with the exit).
async fn stop_instance(client: Arc<PluginClient>) -> Option<PluginExit> {
    match Arc::try_unwrap(client) {
        Ok(client) => client.shutdown().await.ok(),
        Err(shared) => {
            shared.kill();
            let report = shared.exited().await;
            Some(PluginExit {
                status: report.status,
                stop: Stop::Killed,
            })
        }
    }
}
