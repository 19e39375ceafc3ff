//! [`Supervisor`]: keeps one plugin running. It starts the plugin, runs a set-up hook on
//! each new instance (give it its host services there), watches it, and when it exits or
//! stops answering its health checks, restarts it per a [`RestartPolicy`]: with
//! exponential backoff, and only so many times in a window before it gives up and marks
//! the plugin failed.
//!
//! With an idle timeout ([`RestartPolicy::idle_timeout`]) it also stops a plugin that has
//! had no call under way for that long (no call in flight, no open stream, no host-service
//! call: [`PluginClient::activity`]), and starts it again, set-up hook included, on the
//! next call through [`Supervisor::channel`] or the next [`Supervisor::plugin`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};
use tonic::body::Body;
use tonic::codegen::{Service, http};

use crate::builder::PluginBuilder;
use crate::client::{PluginClient, PluginExit, Stop};
use crate::lifecycle::{LifecycleEvent, LifecycleKind};

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
    /// Stop the plugin once no call has been under way with it for this long (`None`, the
    /// default: never): no call in flight on its channel, no open stream, no host-service
    /// call ([`PluginClient::activity`]). It is stopped gracefully, recorded
    /// ([`LifecycleKind::IdleStopped`], `tether_plugin_idle_stops_total`), and started
    /// again, its set-up hook included, on the next call through [`Supervisor::channel`] or
    /// the next [`Supervisor::plugin`]. An idle stop is not a restart.
    pub idle_timeout: Option<Duration>,
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
            idle_timeout: None,
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
    /// Stopped after its idle timeout; the next call starts it again.
    Idle {
        /// Restarts so far.
        restarts: u32,
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
    wake: Arc<Demand>,
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
        let wake = Arc::new(watch::Sender::new(0));
        let task = tokio::spawn(supervise(
            name.to_owned(),
            Arc::new(factory),
            policy,
            Arc::new(setup) as Hook<T>,
            state_sender,
            Arc::clone(&wake),
            stopped,
        ));
        Supervisor {
            name: name.to_owned(),
            state,
            wake,
            stop: Some(stop),
            task,
        }
    }

    /// A channel to whichever instance runs: each call waits while one starts or backs
    /// off, and starts the plugin again if it was stopped for being idle. Build any
    /// generated client on it, once. A call fails (with a [`SupervisorError`]) once the
    /// supervisor has failed or stopped, and with the instance's error if the instance ends
    /// during the call. A call made here can never race an idle stop: the instance counts
    /// it as under way before the supervisor may decide that it is idle.
    pub fn channel(&self) -> SupervisedChannel {
        SupervisedChannel {
            name: Arc::from(self.name.as_str()),
            state: self.state.clone(),
            wake: Arc::clone(&self.wake),
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

    /// The running instance, waiting while one starts or backs off, and starting it again
    /// if it was stopped for being idle; an error once the supervisor has failed or
    /// stopped. With an idle timeout, prefer [`Supervisor::channel`]: an instance taken
    /// from here may be stopped for being idle between this call and the first call made
    /// on it (count your work with [`PluginClient::activity`] to prevent that).
    pub async fn plugin(&self) -> Result<Arc<PluginClient>, SupervisorError> {
        running(&self.name, self.state.clone(), &self.wake).await
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

/// The running instance, waiting while one starts or backs off, and waking an idle one.
async fn running(
    name: &str,
    mut state: watch::Receiver<State>,
    wake: &Demand,
) -> Result<Arc<PluginClient>, SupervisorError> {
    loop {
        match &*state.borrow_and_update() {
            State::Running { plugin, .. } => return Ok(Arc::clone(plugin)),
            State::Failed { restarts, reason } => {
                return Err(SupervisorError::Failed {
                    plugin: name.to_owned(),
                    restarts: *restarts,
                    reason: reason.clone(),
                });
            }
            State::Stopped { reason } => {
                return Err(SupervisorError::Stopped {
                    plugin: name.to_owned(),
                    reason: reason.clone(),
                });
            }
            // Demand made after the supervisor marked the plugin idle: counted.
            State::Idle { .. } => wake.send_modify(|demand| *demand = demand.wrapping_add(1)),
            State::Starting { .. } | State::Backoff { .. } => {}
        }
        if state.changed().await.is_err() {
            return Err(SupervisorError::Stopped {
                plugin: name.to_owned(),
                reason: "the supervisor ended".to_owned(),
            });
        }
    }
}

/// The channel of [`Supervisor::channel`]: every call goes to the instance running when it
/// is made, which is started first if it was stopped for being idle. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SupervisedChannel {
    name: Arc<str>,
    state: watch::Receiver<State>,
    wake: Arc<Demand>,
}

impl SupervisedChannel {
    /// The running instance with this call counted as under way on it: the supervisor
    /// marks an instance idle before it checks that no call is under way, so an instance
    /// still running after the call was counted will serve it.
    async fn instance(&self) -> Result<(Arc<PluginClient>, crate::Busy), SupervisorError> {
        loop {
            let plugin = running(&self.name, self.state.clone(), &self.wake).await?;
            let busy = plugin.activity().begin();
            let still = matches!(&*self.state.borrow(),
                State::Running { plugin: now, .. } if Arc::ptr_eq(now, &plugin));
            if still {
                return Ok((plugin, busy));
            }
        }
    }
}

impl Service<http::Request<Body>> for SupervisedChannel {
    type Response = http::Response<Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call finds its instance, and waits for that instance's channel to be ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (plugin, busy) = this.instance().await?;
            let mut channel = plugin.channel();
            std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
            // The channel counts the call from here until its response ends.
            let response = channel.call(request).await?;
            drop(busy);
            Ok(response)
        })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // The running instance is killed when its last client handle goes.
        self.task.abort();
    }
}

/// Calls for an idle-stopped plugin: a count that callers raise when they find it idle.
type Demand = watch::Sender<u64>;

/// What one instance's run tells and watches: the supervisor's state, and the demand for
/// an idle-stopped plugin.
struct Signals<'a> {
    state: &'a watch::Sender<State>,
    demand: &'a watch::Receiver<u64>,
}

/// How an instance ended.
struct End {
    failed: bool,
    reason: String,
}

/// How one instance's run ended.
enum Outcome {
    /// The instance ended (or its set-up failed).
    Ended(End),
    /// It was idle for the idle timeout; the state is [`State::Idle`] already. The demand
    /// count just before the state changed: a count past it asks for a new instance.
    Idle(u64),
    /// The supervisor was told to stop.
    Stop,
}

async fn supervise<T: Send + 'static>(
    name: String,
    factory: Factory,
    policy: RestartPolicy,
    setup: Hook<T>,
    state: watch::Sender<State>,
    wake: Arc<Demand>,
    mut stop: oneshot::Receiver<()>,
) -> Option<PluginExit> {
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let mut restarts = 0u32;
    let mut backoff = policy.initial_backoff;
    let mut start_reason = None;
    loop {
        state.send_replace(State::Starting { restarts });
        let mut builder = factory();
        builder.start_reason = start_reason.take();
        let lifecycle = builder.lifecycle_hook();
        let program = builder.program().to_owned();
        let started = tokio::select! {
            started = builder.start() => started,
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
                let mut demand = wake.subscribe();
                let signals = Signals {
                    state: &state,
                    demand: &demand,
                };
                match run(
                    &name, &client, &policy, &setup, signals, restarts, &mut stop,
                )
                .await
                {
                    Outcome::Ended(end) => end,
                    Outcome::Stop => {
                        // The state holds a handle too: replace it first, so that the
                        // stop can be graceful.
                        state.send_replace(State::Stopped {
                            reason: "shut down".to_owned(),
                        });
                        return stop_instance(client).await;
                    }
                    Outcome::Idle(before) => {
                        let idle = policy.idle_timeout.unwrap_or_default();
                        tracing::info!(target: "tether::supervisor", plugin = name, pid = client.pid(), ?idle,
                            "plugin idle; stopping it until the next call");
                        crate::metric::idle_stopped(&name);
                        if let Some(hook) = &lifecycle {
                            hook(&LifecycleEvent {
                                plugin: name.clone(),
                                pid: Some(client.pid()),
                                instance: Some(client.instance()),
                                program,
                                kind: LifecycleKind::IdleStopped,
                                detail: format!(
                                    "no call under way for {}; started again on the next call",
                                    humanize(idle)
                                ),
                            });
                        }
                        let _ = stop_instance(client).await;
                        tokio::select! {
                            _ = demand.wait_for(|now| *now != before) => {}
                            _ = &mut stop => {
                                state.send_replace(State::Stopped { reason: "shut down".to_owned() });
                                return None;
                            }
                        }
                        start_reason =
                            Some("started again on demand after an idle stop".to_owned());
                        continue;
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
        start_reason = Some(format!("restarted by its supervisor ({restarts} restarts)"));
    }
}

/// A duration as an operator reads it: `90s`, `250ms`.
fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Runs one instance until it ends, is idle for the idle timeout, or the supervisor is
/// told to stop.
async fn run<T>(
    name: &str,
    client: &Arc<PluginClient>,
    policy: &RestartPolicy,
    setup: &Hook<T>,
    signals: Signals<'_>,
    restarts: u32,
    stop: &mut oneshot::Receiver<()>,
) -> Outcome {
    let Signals { state, demand } = signals;
    let kept = tokio::select! {
        kept = setup(Arc::clone(client)) => kept,
        report = client.exited() => return Outcome::Ended(End { failed: true, reason: report.to_string() }),
        _ = &mut *stop => return Outcome::Stop,
    };
    let _kept = match kept {
        Ok(kept) => kept,
        Err(err) => {
            client.kill();
            let _ = client.exited().await;
            return Outcome::Ended(End {
                failed: true,
                reason: format!("its set-up failed: {err}"),
            });
        }
    };
    state.send_replace(State::Running {
        plugin: Arc::clone(client),
        restarts,
    });
    let exited = client.exited();
    let hung = hung(client, policy);
    tokio::pin!(exited, hung);
    loop {
        tokio::select! {
            report = &mut exited => return Outcome::Ended(End {
                failed: !report.status.success(),
                reason: report.to_string(),
            }),
            () = &mut hung => {
                tracing::warn!(target: "tether::supervisor", plugin = name, pid = client.pid(),
                    "plugin failed its health checks; killing its process group");
                client.kill();
                let report = client.exited().await;
                return Outcome::Ended(End { failed: true, reason: format!("it stopped answering its health checks ({report})") });
            }
            () = idle(client, policy.idle_timeout) => {
                // Idle first, then a last look: a call counted on the instance before this
                // state change is seen below; one counted after sees the state change
                // ([`SupervisedChannel`]) and waits for the next instance.
                // Demand counted from here on wakes the plugin: whoever sees `Idle` below
                // counts after this look.
                let before = *demand.borrow();
                state.send_replace(State::Idle { restarts });
                if client.activity().in_flight() == 0 {
                    return Outcome::Idle(before);
                }
                state.send_replace(State::Running {
                    plugin: Arc::clone(client),
                    restarts,
                });
            }
            _ = &mut *stop => return Outcome::Stop,
        }
    }
}

/// Returns once no call has been under way with `client` for `timeout` (never without one).
async fn idle(client: &PluginClient, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        match client.activity().idle_for() {
            Some(idle) if idle >= timeout => return,
            Some(idle) => sleep(timeout - idle).await,
            // A call is under way: look again once it could have been idle long enough.
            None => sleep(timeout).await,
        }
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
