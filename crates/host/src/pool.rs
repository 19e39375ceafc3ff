//! Plugins started ahead of need ([`Pool`]), for hosts that start a plugin per job: taking
//! one costs a queue pop instead of a process start.
//!
//! A pooled plugin is started exactly as [`PluginBuilder::start`] starts any other (the
//! builder comes from the host's factory each time: the same sandbox, the same pinned
//! binary, checked at its start, the same name), and has answered its health check before
//! it is offered. It is handed out once and never comes back: a plugin that served one job
//! carries nothing into the next. One that ended while it waited is discarded, never
//! handed out. Host services are connected to a plugin after it is taken, as to any other.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::builder::PluginBuilder;
use crate::client::PluginClient;
use crate::error::Error;

type Factory = Arc<dyn Fn() -> PluginBuilder + Send + Sync>;

/// How long the pool waits after a plugin failed to start before it tries again: a broken
/// plugin must not make the pool spin.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Keeps `size` started plugins ready to be taken; see the module docs.
///
/// ```no_run
/// # async fn demo() -> Result<(), tether_host::Error> {
/// use tether_host::{PluginClient, Pool};
///
/// let pool = Pool::start(4, || PluginClient::builder("converter", "./converter"));
/// let plugin = pool.take().await?; // started already: ready at once
/// plugin.health().await?;
/// plugin.shutdown().await?;
/// pool.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Pool {
    shared: Arc<Shared>,
    filler: JoinHandle<()>,
}

struct Shared {
    factory: Factory,
    size: usize,
    ready: Mutex<VecDeque<PluginClient>>,
    /// Wakes the filler: a plugin was taken, or the pool is shutting down.
    taken: Notify,
    /// Why the last start failed, if it did (cleared by the next success).
    last_failure: Mutex<Option<String>>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.shared.size)
            .field("ready", &self.ready())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts keeping `size` plugins ready, each from a builder `factory` makes, in the
    /// background (on the current tokio runtime). A pool of size 0 starts every plugin when
    /// it is taken.
    pub fn start<F>(size: usize, factory: F) -> Pool
    where
        F: Fn() -> PluginBuilder + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared {
            factory: Arc::new(factory),
            size,
            ready: Mutex::new(VecDeque::with_capacity(size)),
            taken: Notify::new(),
            last_failure: Mutex::new(None),
        });
        let filler = tokio::spawn(fill(Arc::clone(&shared)));
        Pool { shared, filler }
    }

    /// A started plugin that has just answered a health check: a ready one if the pool
    /// has one (a replacement starts in the background), else one started now. A pooled
    /// plugin that ended while it waited, or does not answer, is discarded (and stopped),
    /// never returned.
    pub async fn take(&self) -> Result<PluginClient, Error> {
        loop {
            let next = lock(&self.shared.ready).pop_front();
            // The replacement starts once this one is handed out or discarded (on a
            // current-thread runtime its start would hold up the health check), and also
            // if this call is dropped meanwhile.
            let _replace = Replace(&self.shared.taken);
            let Some(plugin) = next else {
                return (self.shared.factory)().start().await;
            };
            if plugin.exit_status().is_none() {
                match plugin.health().await {
                    Ok(()) => return Ok(plugin),
                    Err(err) => {
                        tracing::warn!(target: "tether::host", plugin = plugin.name(), pid = plugin.pid(),
                            error = %err, "a pooled plugin did not answer its health check; discarded");
                    }
                }
            } else {
                tracing::warn!(target: "tether::host", plugin = plugin.name(), pid = plugin.pid(),
                    "a pooled plugin ended while it waited; discarded");
            }
            // Dropping a spawned plugin kills its process group.
            drop(plugin);
        }
    }

    /// How many plugins are ready to be taken now.
    pub fn ready(&self) -> usize {
        lock(&self.shared.ready).len()
    }

    /// How many plugins the pool keeps ready.
    pub fn size(&self) -> usize {
        self.shared.size
    }

    /// Why the pool's last start failed, if it did and none has succeeded since (the pool
    /// then tries again every second; every failure is also logged).
    pub fn last_failure(&self) -> Option<String> {
        lock(&self.shared.last_failure).clone()
    }

    /// Stops filling and stops every ready plugin gracefully. (Dropping the pool stops
    /// filling and kills the ready plugins' process groups instead.)
    pub async fn shutdown(mut self) {
        self.filler.abort();
        // Aborted: it ends at its next await, dropping any start under way.
        let _ = (&mut self.filler).await;
        let ready: Vec<PluginClient> = lock(&self.shared.ready).drain(..).collect();
        for plugin in ready {
            if let Err(err) = plugin.shutdown().await {
                tracing::warn!(target: "tether::host", %err, "a pooled plugin did not stop cleanly");
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.filler.abort();
    }
}

/// Wakes the pool's filler when dropped: a plugin was taken from the pool.
struct Replace<'a>(&'a Notify);

impl Drop for Replace<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps the pool full, one start at a time, until the pool aborts it (shut down or
/// dropped).
async fn fill(pool: Arc<Shared>) {
    loop {
        if lock(&pool.ready).len() >= pool.size {
            // A take made since is not missed: `notify_one` leaves a permit when no one
            // waits.
            pool.taken.notified().await;
            continue;
        }
        match (pool.factory)().start().await {
            Ok(plugin) => {
                *lock(&pool.last_failure) = None;
                lock(&pool.ready).push_back(plugin);
            }
            Err(err) => {
                // Logged by `start`; kept for `last_failure`.
                *lock(&pool.last_failure) = Some(err.to_string());
                tokio::time::sleep(RETRY_AFTER_FAILURE).await;
            }
        }
    }
}
