//! A pool of plugins started ahead of need: a taken plugin was started before it was asked
//! for, answers, runs under the same sandbox, is handed out once and replaced; one that died
//! while it waited is never handed out; dropping the pool stops what it kept ready; a plugin
//! that cannot start makes the pool say why.

use std::sync::{Arc, Mutex};

use tether_host::{Error, Layer, LifecycleKind, PluginClient, Pool};

use crate::support::{HANDSHAKE, PATIENCE, eventually, is_gone, missing, test_plugin};

/// A pool of `size` test plugins named `name`, and the pids of every plugin it started.
fn pool(name: &'static str, size: usize) -> (Pool, Arc<Mutex<Vec<u32>>>) {
    let started = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&started);
    let pool = Pool::start(size, move || {
        let record = Arc::clone(&record);
        test_plugin(name).on_lifecycle(move |event| {
            if event.kind == LifecycleKind::Started {
                record.lock().expect("not poisoned").extend(event.pid);
            }
        })
    });
    (pool, started)
}

fn pids(started: &Mutex<Vec<u32>>) -> Vec<u32> {
    started.lock().expect("not poisoned").clone()
}

#[tokio::test]
async fn a_taken_plugin_was_started_ahead_answers_and_is_replaced_never_handed_out_twice() {
    let (pool, started) = pool("pooled", 2);
    assert_eq!(pool.size(), 2);
    assert!(
        eventually(PATIENCE, || pool.ready() == 2).await,
        "the pool fills: {:?}",
        pool.last_failure()
    );
    let ahead = pids(&started);
    let first = pool.take().await.expect("a ready plugin");
    let second = pool.take().await.expect("a ready plugin");
    assert_ne!(first.pid(), second.pid());
    assert!(
        ahead.contains(&first.pid()) && ahead.contains(&second.pid()),
        "both were started before they were taken: {ahead:?}, took {} and {}",
        first.pid(),
        second.pid()
    );
    first.health().await.expect("it answers");
    // The same sandbox as any plugin the builder starts.
    let sandbox = first.sandbox().expect("a spawned plugin's sandbox");
    for layer in Layer::ALL {
        if missing(layer).is_none() {
            assert!(sandbox.is_enforced(layer), "{layer}: {sandbox}");
        }
    }
    // Replaced, by new processes.
    assert!(eventually(PATIENCE, || pool.ready() == 2).await);
    let all = pids(&started);
    assert_eq!(all.len(), 4, "two started ahead, two replacements: {all:?}");
    let third = pool.take().await.expect("a ready plugin");
    assert!(![first.pid(), second.pid()].contains(&third.pid()));
    for plugin in [first, second, third] {
        plugin.shutdown().await.expect("it stops");
    }
    pool.shutdown().await;
    for pid in pids(&started) {
        assert!(
            eventually(PATIENCE, || is_gone(pid)).await,
            "{pid} still runs"
        );
    }
}

#[tokio::test]
async fn a_pooled_plugin_that_died_while_it_waited_is_never_handed_out() {
    let (pool, started) = pool("pooled-dies", 1);
    assert!(eventually(PATIENCE, || pool.ready() == 1).await);
    let waiting = pids(&started)[0];
    // SAFETY: kill(2) on the pid of a process this test's host started and has not reaped.
    assert_eq!(unsafe { libc::kill(waiting as i32, libc::SIGKILL) }, 0);
    assert!(eventually(PATIENCE, || is_gone(waiting)).await);
    let taken = pool.take().await.expect("a plugin");
    assert_ne!(taken.pid(), waiting, "the dead plugin was handed out");
    taken.health().await.expect("it answers");
    taken.shutdown().await.expect("it stops");
    pool.shutdown().await;
}

#[tokio::test]
async fn dropping_a_pool_stops_the_plugins_it_kept_ready() {
    let (pool, started) = pool("pooled-dropped", 2);
    assert!(eventually(PATIENCE, || pool.ready() == 2).await);
    drop(pool);
    for pid in pids(&started) {
        assert!(
            eventually(PATIENCE, || is_gone(pid)).await,
            "{pid} outlived its pool"
        );
    }
}

#[tokio::test]
async fn a_pool_of_a_plugin_that_cannot_start_says_why_and_take_fails_with_the_error() {
    let pool = Pool::start(1, || {
        PluginClient::builder("pooled-missing", "/nonexistent/tether-plugin").handshake(HANDSHAKE)
    });
    assert!(
        eventually(PATIENCE, || pool.last_failure().is_some()).await,
        "the pool reports its failure"
    );
    let failure = pool.last_failure().expect("a failure");
    assert!(failure.contains("/nonexistent/tether-plugin"), "{failure}");
    assert_eq!(pool.ready(), 0);
    let err = pool.take().await.expect_err("nothing can start");
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
}
