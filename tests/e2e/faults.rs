//! Faults on real processes around tether's host services: a plugin or the host killed in
//! the middle of a write, a plugin that exits while a file is streamed to it, a thousand
//! start/stop cycles, and a plugin that opens connections and calls without end.
//!
//! Every wait here is on the event itself (an audit record, an exit, a line from a helper
//! process); the time bounds only say when a failure is noticed.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tether_host::PluginClient;
use tether_hostserve::{Limits, RESERVED_PREFIX};
use tether_test_contract::testing::testing_client::TestingClient;
use tether_test_contract::testing::{HostOpRequest, HostOpResponse};
use tokio::io::AsyncBufReadExt;

use crate::hostserve::{Fixture, GRANTS, op, op_with};
use crate::supervision::{helper, value};
use crate::support::{
    HOST_HELPER, PATIENCE, SocketBase, TEST_PLUGIN, eventually, is_gone, recorded,
};

/// Long enough that only noticing the plugin's end (never the stall timeout) can end a
/// call within [`PATIENCE`].
const NEVER: Duration = Duration::from_secs(3600);

fn kill(pid: u32) {
    let pid = libc::pid_t::try_from(pid).expect("a pid");
    // SAFETY: kill(2) on a process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

/// The names and sizes of the host's temporary files in `dir`, as on disk.
fn temporaries(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .expect("the directory exists")
        .filter_map(Result::ok)
        .map(|entry| {
            let size = entry.metadata().map_or(0, |meta| meta.len());
            (entry.file_name().to_string_lossy().into_owned(), size)
        })
        .filter(|(name, _)| name.starts_with(RESERVED_PREFIX))
        .collect()
}

/// Everything in `dir`, as on disk, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("the directory exists")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// How many of this process's file descriptors are open on `file`.
fn open_fds_on(file: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(Result::ok)
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == file))
        .count()
}

/// Starts `op` in `plugin` in the background, with a deadline far beyond the test's.
fn start_op(
    plugin: &PluginClient,
    op: &str,
    path: &[u8],
    size: u64,
) -> tokio::task::JoinHandle<Result<tonic::Response<HostOpResponse>, tonic::Status>> {
    let mut request = tonic::Request::new(HostOpRequest {
        op: op.into(),
        path: path.to_vec(),
        data: Vec::new(),
        size,
    });
    request.set_timeout(NEVER);
    let mut client = TestingClient::new(plugin.channel());
    tokio::spawn(async move { client.host_op(request).await })
}

/// Opens `calls` never-ending calls of `method` in `plugin` and returns the outcomes of the
/// first `ended` to end; fails if they do not end within [`PATIENCE`].
async fn open_streams(
    plugin: &PluginClient,
    method: &str,
    calls: usize,
    ended: usize,
) -> HostOpResponse {
    let mut request = tonic::Request::new(HostOpRequest {
        op: "open_streams".into(),
        path: method.as_bytes().to_vec(),
        data: ended.to_string().into_bytes(),
        size: calls as u64,
    });
    request.set_timeout(PATIENCE);
    match TestingClient::new(plugin.channel()).host_op(request).await {
        Ok(answer) => answer.into_inner(),
        Err(status) => panic!(
            "{ended} of {calls} never-ending {method} calls were not refused within \
             {PATIENCE:?}: {status}"
        ),
    }
}

/// Audit records of `plugin` whose reason contains `reason`.
fn audited(fixture: &Fixture, plugin: &str, reason: &str) -> Vec<Value> {
    fixture
        .audit_lines()
        .into_iter()
        .filter(|record| {
            record["plugin"] == plugin
                && record["reason"]
                    .as_str()
                    .is_some_and(|text| text.contains(reason))
        })
        .collect()
}

/// How a write in the middle of its stream comes to an end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruption {
    /// The plugin is SIGKILLed: its connection to the host ends.
    Kill,
    /// The plugin's own caller gives up, so the plugin drops the call: it is cancelled
    /// (`RST_STREAM`) on a connection that stays up.
    Abandon,
}

/// A plugin streams 3 MiB into `output/partial` and never ends the write; then `how`.
/// Nothing may be left, on disk or through the services, and the quota comes back.
async fn interrupted_write(name: &str, how: Interruption) {
    // More than one 1 MiB batch, so part of it is on disk when the write is cut.
    const SENT: u64 = 3 << 20;
    let fixture = Fixture::new(Limits {
        stall_timeout: NEVER,
        ..Limits::default()
    });
    fixture.grant(name, &GRANTS);
    fixture.grant("witness", &["read:output/**"]);
    let (writer, _connection) = fixture.start(name).await;
    let (witness, _w) = fixture.start("witness").await;
    let output = fixture.workspace.join("output");

    let writing = start_op(&writer, "write_hold", b"output/partial", SENT);
    // The host has received all of it, and some of it is in its temporary file.
    let services = &fixture.services;
    let under_way = eventually(PATIENCE, || {
        services.bytes_written(name) == SENT
            && temporaries(&output)
                .iter()
                .any(|(_, size)| *size >= 1 << 20)
    })
    .await;
    assert!(
        under_way,
        "the write never got under way: {} bytes counted, {:?} on disk",
        services.bytes_written(name),
        temporaries(&output)
    );

    match how {
        Interruption::Kill => {
            kill(writer.pid());
            let exit = tokio::time::timeout(PATIENCE, writer.exited())
                .await
                .expect("the plugin's end is noticed");
            assert!(exit.to_string().contains("signal 9"), "{exit}");
            let ended = writing.await.expect("the waiting task");
            assert!(ended.is_err(), "the killed plugin answered: {ended:?}");
        }
        Interruption::Abandon => {
            writing.abort();
            assert!(writing.await.is_err_and(|err| err.is_cancelled()));
        }
    }
    // The host notices: the write's one audit record is written when it ends.
    let ended = eventually(PATIENCE, || !audited(&fixture, name, "").is_empty()).await;
    assert!(ended, "the write never ended on the host");
    let records = audited(&fixture, name, "");
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(
        (&record["operation"], &record["resource"]),
        (&Value::from("write_file"), &Value::from("output/partial")),
        "{record}"
    );
    if how == Interruption::Abandon {
        let reason = record["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("cancelled"), "{record}");
    }

    // Nothing is left, on disk or through the services, and the quota is given back.
    assert_eq!(
        listing(&output),
        Vec::<String>::new(),
        "a file was left behind"
    );
    assert_eq!(
        services.bytes_written(name),
        0,
        "the quota was not given back"
    );
    let listed = op(&witness, "read_dir", b"output").await;
    assert_eq!(
        (listed.outcome.as_str(), listed.names.len()),
        ("ok", 0),
        "{listed:?}"
    );
    let read = op(&witness, "read_file", b"output/partial").await;
    assert_eq!(read.outcome, "not_found", "{read:?}");
    if how == Interruption::Abandon {
        // The plugin lives on, with its whole quota.
        let again = op_with(&writer, "write_zeros", b"output/whole", Vec::new(), SENT).await;
        assert_eq!(again.outcome, "ok", "{}", again.message);
        assert_eq!(services.bytes_written(name), SENT);
    }
}

#[tokio::test]
async fn a_plugin_killed_in_the_middle_of_a_write_leaves_no_file_and_gets_its_quota_back() {
    interrupted_write("killed-writer", Interruption::Kill).await;
}

#[tokio::test]
async fn a_write_the_plugin_abandons_half_way_leaves_no_file_and_gives_the_quota_back() {
    interrupted_write("abandoning-writer", Interruption::Abandon).await;
}

#[tokio::test]
async fn a_plugin_that_exits_while_a_file_streams_to_it_frees_the_slot_and_the_file() {
    const BIG: usize = 16 << 20;
    let fixture = Fixture::new(Limits {
        stall_timeout: NEVER,
        ..Limits::default()
    });
    let big = fixture.workspace.join("config/big.bin");
    std::fs::write(&big, vec![7u8; BIG]).expect("fixture setup");
    let big = big.canonicalize().expect("fixture setup");
    fixture.grant("quitter", &GRANTS);
    let (plugin, _connection) = fixture.start("quitter").await;

    // The plugin opens the read and takes nothing: the host holds the file and a slot,
    // with the rest of the file waiting to be sent.
    let held = op_with(&plugin, "hold_reads", b"config/big.bin", Vec::new(), 1).await;
    assert_eq!(held.names, ["ok"], "{held:?}");
    assert_eq!(fixture.services.calls_in_flight("quitter"), 1);
    assert_eq!(open_fds_on(&big), 1, "the host has the file open");

    kill(plugin.pid());
    tokio::time::timeout(PATIENCE, plugin.exited())
        .await
        .expect("the plugin's end is noticed");
    // With a stall timeout of an hour, only noticing the plugin's end frees them.
    let services = &fixture.services;
    let freed = eventually(PATIENCE, || {
        services.calls_in_flight("quitter") == 0 && open_fds_on(&big) == 0
    })
    .await;
    assert!(
        freed,
        "after the plugin's exit the host still holds {} slot(s) and {} fd(s) on the file",
        services.calls_in_flight("quitter"),
        open_fds_on(&big)
    );
    assert_eq!(
        services.tracked_instances(),
        0,
        "the ended instance is forgotten"
    );
    // The read left its one record; the host goes on serving.
    let recorded = eventually(PATIENCE, || {
        audited(&fixture, "quitter", "granted by `read:config/**`").len() == 1
    })
    .await;
    assert!(recorded, "{:?}", fixture.audit_lines());
    fixture.grant("next", &GRANTS);
    let (next, _n) = fixture.start("next").await;
    let after = op(&next, "read_file", b"config/a.txt").await;
    assert_eq!(after.outcome, "ok", "{}", after.message);
}

#[tokio::test]
async fn a_call_given_up_while_it_waits_for_a_slot_leaves_its_one_audit_record() {
    let fixture = Fixture::new(Limits {
        max_concurrent_calls: 1,
        queue_wait: NEVER,
        stall_timeout: NEVER,
        ..Limits::default()
    });
    std::fs::write(fixture.workspace.join("config/big.bin"), vec![1u8; 8 << 20])
        .expect("fixture setup");
    fixture.grant("waiter", &GRANTS);
    let (plugin, _connection) = fixture.start("waiter").await;
    let services = &fixture.services;
    // Its one slot is taken by a read it does not read ...
    let held = op_with(&plugin, "hold_reads", b"config/big.bin", Vec::new(), 1).await;
    assert_eq!(held.names, ["ok"], "{held:?}");
    // ... so its next call waits, until the plugin gives up on it.
    let waiting = start_op(&plugin, "flood", b"config/a.txt", 1);
    assert!(eventually(PATIENCE, || services.calls_waiting("waiter") == 1).await);
    waiting.abort();
    let recorded = eventually(PATIENCE, || {
        !audited(&fixture, "waiter", "cancelled").is_empty()
    })
    .await;
    assert!(
        recorded,
        "no record of the abandoned call: {:?}",
        fixture.audit_lines()
    );
    let records = audited(&fixture, "waiter", "cancelled");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (&records[0]["operation"], &records[0]["resource"]),
        (&Value::from("stat"), &Value::from("config/a.txt")),
        "{}",
        records[0]
    );
    assert_eq!(services.calls_waiting("waiter"), 0);
    assert_eq!(
        services.calls_in_flight("waiter"),
        1,
        "the held read keeps its slot"
    );
}

#[tokio::test]
async fn calls_that_never_finish_their_request_are_refused_past_the_limit_and_audited() {
    const OPEN: usize = 32;
    const CALLS: usize = 200;
    let fixture = Fixture::new(Limits {
        max_open_calls: OPEN,
        stall_timeout: NEVER,
        ..Limits::default()
    });
    fixture.grant("opener", &GRANTS);
    fixture.grant("bystander", &GRANTS);
    let (opener, _o) = fixture.start("opener").await;
    let (bystander, _b) = fixture.start("bystander").await;

    // ReadDir calls whose request never arrives: the host cannot even read what they ask.
    let refused = CALLS - OPEN;
    let flood = open_streams(&opener, "ReadDir", CALLS, refused).await;
    assert_eq!(flood.outcome, "ok", "{}", flood.message);
    assert_eq!(flood.names.len(), refused, "{flood:?}");
    assert!(
        flood.names.iter().all(|outcome| outcome == "exhausted"),
        "{:?}",
        flood.names
    );
    // Each refusal leaves its record.
    let all_audited = eventually(PATIENCE, || {
        audited(&fixture, "opener", "open-call limit reached").len() == refused
    })
    .await;
    assert!(
        all_audited,
        "{} of {refused} refusals audited",
        audited(&fixture, "opener", "open-call limit reached").len()
    );
    let record = &audited(&fixture, "opener", "open-call limit reached")[0];
    assert_eq!(
        (&record["operation"], &record["decision"]),
        (&Value::from("read_dir"), &Value::from("denied")),
        "{record}"
    );
    // The opener's next call is refused too while its calls stay open ...
    let own = op(&opener, "read_file", b"config/a.txt").await;
    assert_eq!(own.outcome, "exhausted", "{own:?}");
    // ... while the host serves the other plugin.
    let served = op(&bystander, "read_file", b"config/a.txt").await;
    assert_eq!(
        (served.outcome.as_str(), served.data.as_slice()),
        ("ok", &b"config a"[..]),
        "{served:?}"
    );
}

#[tokio::test]
async fn writes_that_never_send_their_first_message_hold_a_slot_each() {
    const SLOTS: usize = 4;
    const WRITES: usize = 20;
    let fixture = Fixture::new(Limits {
        max_concurrent_calls: SLOTS,
        queue_wait: Duration::from_millis(300),
        stall_timeout: NEVER,
        ..Limits::default()
    });
    fixture.grant("silent", &GRANTS);
    fixture.grant("bystander", &GRANTS);
    let (silent, _s) = fixture.start("silent").await;
    let (bystander, _b) = fixture.start("bystander").await;

    let refused = WRITES - SLOTS;
    let flood = open_streams(&silent, "WriteFile", WRITES, refused).await;
    assert_eq!(flood.outcome, "ok", "{}", flood.message);
    assert!(
        flood.names.len() == refused && flood.names.iter().all(|outcome| outcome == "exhausted"),
        "{:?}",
        flood.names
    );
    assert_eq!(fixture.services.calls_in_flight("silent"), SLOTS);
    let all_audited = eventually(PATIENCE, || {
        audited(&fixture, "silent", "concurrency limit reached").len() == refused
    })
    .await;
    assert!(all_audited, "{:?}", fixture.audit_lines());
    let served = op_with(&bystander, "write_file", b"output/w", b"w".to_vec(), 0).await;
    assert_eq!(served.outcome, "ok", "{}", served.message);
}

#[tokio::test]
async fn a_host_killed_in_the_middle_of_a_write_leaves_a_file_never_taken_and_swept_at_restart() {
    let fixture = Fixture::new(Limits::default());
    let output = fixture.workspace.join("output");
    std::fs::write(output.join("target"), "old").expect("fixture setup");

    // The host is another process: killed while a plugin's write to `output/target` is
    // half on disk.
    let sockets = SocketBase::new();
    #[allow(
        clippy::disallowed_methods,
        reason = "the host must be a separate process, to be killed"
    )]
    let mut host = tokio::process::Command::new(HOST_HELPER)
        .arg("write-hang")
        .arg(TEST_PLUGIN)
        .arg(&fixture.workspace)
        .envs(sockets.env())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("host-helper starts");
    let mut lines = tokio::io::BufReader::new(host.stdout.take().expect("piped")).lines();
    let mut said = Vec::new();
    let ready = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("the helper's stdout") {
            if line == "ready" {
                return true;
            }
            said.push(line);
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "the helper said {said:?}");
    let word = |key: &str| {
        said.iter()
            .find_map(|line| line.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {said:?}"))
            .to_owned()
    };
    let temp = word("temp ");
    let plugin_pid: u32 = word("plugin-pid ").parse().expect("a pid");
    host.start_kill().expect("SIGKILL the host");
    let status = host.wait().await.expect("the host ends");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    // Its plugin dies with it (its parent-death signal).
    assert!(eventually(PATIENCE, || is_gone(plugin_pid)).await);

    // The leftover: nobody could remove it.
    assert_eq!(listing(&output), [temp.clone(), "target".to_owned()]);
    // A temporary file of a writer still running (this process) is left alone by the
    // sweep, yet never shown nor served either.
    let live = format!("{RESERVED_PREFIX}{}-424242", std::process::id());
    std::fs::write(output.join(&live), "PARTIAL").expect("fixture setup");

    // The next start of the host services on this workspace removes the leftover, and
    // says so.
    fixture.grant(
        "after-crash",
        &["read:output/**", "write:output/**", "delete:output/**"],
    );
    let (plugin, _connection) = fixture.start("after-crash").await;
    assert_eq!(listing(&output), [live.clone(), "target".to_owned()]);
    let swept = recorded("after-crash")
        .into_iter()
        .find(|event| event.target == "tether::hostserve" && event.message.contains("leftover"));
    let swept = swept.expect("the sweep is logged");
    assert!(swept.message.contains("removed 1 "), "{swept:?}");

    // Nothing of the interrupted write is taken for the target, or shown.
    let target = op(&plugin, "read_file", b"output/target").await;
    assert_eq!(
        (target.outcome.as_str(), target.data.as_slice()),
        ("ok", &b"old"[..])
    );
    let listed = op(&plugin, "read_dir", b"output").await;
    assert_eq!(listed.names, ["target"], "{listed:?}");
    // No call may name a reserved file.
    let reserved = format!("output/{live}");
    for name in [
        "read_file",
        "stat",
        "delete_file",
        "create_dir",
        "write_file",
    ] {
        let answer = op_with(&plugin, name, reserved.as_bytes(), b"x".to_vec(), 0).await;
        assert_eq!(answer.outcome, "invalid", "{name}: {answer:?}");
        assert!(
            answer.message.contains("reserved"),
            "{name}: {}",
            answer.message
        );
    }
    assert_eq!(
        std::fs::read_to_string(output.join(&live)).expect("still there"),
        "PARTIAL"
    );
    // A new write goes through, and leaves no temporary file behind.
    let written = op_with(&plugin, "write_file", b"output/target", b"new".to_vec(), 0).await;
    assert_eq!(written.outcome, "ok", "{}", written.message);
    assert_eq!(listing(&output), [live, "target".to_owned()]);
}

#[tokio::test]
async fn a_thousand_start_stop_cycles_with_host_services_leave_the_host_as_it_was() {
    const CYCLES: &str = "1000";
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir = dir.path().to_str().expect("a UTF-8 temporary directory");
    let report = helper(&["service-cycles", TEST_PLUGIN, dir, CYCLES]).await;
    println!("{CYCLES} cycles with host services: {report:?}");
    let [fds, sockets, threads, rss] =
        ["fds", "sockets", "threads", "rss_kib"].map(|key| value(&report, key).to_vec());
    // Noise margins: none for fds and sockets; two threads (the runtime's blocking pool
    // may keep a worker a little longer); 8 MiB of resident memory (allocator caches).
    assert!(fds[1] <= fds[0], "open fds grew: {fds:?}");
    assert!(sockets[1] <= sockets[0], "sockets grew: {sockets:?}");
    assert!(threads[1] <= threads[0] + 2, "threads grew: {threads:?}");
    assert!(
        rss[1] <= rss[0] + 8 * 1024,
        "resident memory grew: {rss:?} KiB"
    );
    assert_eq!(
        value(&report, "socket_dirs_left"),
        [0],
        "temporary directories left"
    );
    assert_eq!(
        value(&report, "tracked_instances"),
        [0],
        "the host services still hold state for ended plugins"
    );
}

#[tokio::test]
async fn a_plugin_dialing_its_host_service_socket_without_end_is_refused_past_its_limit() {
    const DIALS: &str = "1500";
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir = dir.path().to_str().expect("a UTF-8 temporary directory");
    let report = helper(&["connection-flood", TEST_PLUGIN, dir, DIALS]).await;
    println!("{DIALS} dials of one host-service socket: {report:?}");
    let one = |key: &str| value(&report, key)[0];
    assert_eq!(
        one("flood_done"),
        1,
        "the dials did not all go through: {report:?}"
    );
    assert_eq!(one("connected"), 1500, "{report:?}");
    // All but the plugin's limit (one of them its own first connection) are refused, and
    // each refusal is audited.
    let limit = one("max_connections");
    assert_eq!(one("refused"), 1500 - (limit - 1), "{report:?}");
    // The host holds at most the plugin's limit of them, far below its 1024 files.
    let fds = value(&report, "fds");
    assert!(fds[1] <= fds[0] + limit, "the host holds {fds:?} fds");
    // The host still serves the other plugin, and the flooder on its first connection.
    assert_eq!(one("bystander_ok"), 1, "{report:?}");
    assert_eq!(one("flooder_ok"), 1, "{report:?}");
}
