//! Bulk file transfers between the host and real plugin processes: `ReadFileBulk` hands
//! the plugin the open file (read-only), `WriteFileBulk` a ring of shared memory the host
//! empties into the file; both arrive on the plugin's descriptor channel, the same capability, quota and
//! audit apply as to `ReadFile` and `WriteFile`, and a plugin that abuses what it is given
//! holds nothing of the host's.

use std::time::Duration;

use tether_hostserve::Limits;

use crate::hostserve::{Fixture, GRANTS, op, op_with};
use crate::support::{PATIENCE, eventually};

/// Data that is not all one byte, so a reordering or a lost piece would show.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// The audit records of `plugin` for `resource`, as `operation decision` pairs.
fn audited(fixture: &Fixture, plugin: &str, resource: &str) -> Vec<String> {
    fixture
        .audit_lines()
        .iter()
        .filter(|line| line["plugin"] == plugin && line["resource"] == resource)
        .map(|line| {
            format!(
                "{} {}",
                line["operation"].as_str().unwrap_or("?"),
                line["decision"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[tokio::test]
async fn bulk_transfers_hand_over_the_file_or_a_ring_checked_and_audited_as_reads_and_writes() {
    let fixture = Fixture::new(Limits::default());
    fixture.grant("bulk", &GRANTS);
    let (plugin, _connection) = fixture.start("bulk").await;
    let channel = op(&plugin, "has_descriptor_channel", b"").await;
    assert_eq!(
        channel.size, 1,
        "a plugin this host started has its channel"
    );

    // 3 MiB and a bit: more than the ring holds at once (4 slots of 1 MiB), so slots go
    // round.
    let contents = pattern((5 << 20) + 17);
    let wrote = op_with(
        &plugin,
        "write_from",
        b"output/bulk.bin",
        contents.clone(),
        0,
    )
    .await;
    assert_eq!(wrote.outcome, "ok", "{}", wrote.message);
    assert_eq!(wrote.size, contents.len() as u64);
    assert!(std::fs::read(fixture.workspace.join("output/bulk.bin")).unwrap() == contents);
    assert_eq!(
        fixture.services.bytes_written("bulk"),
        contents.len() as u64,
        "the host counted the ring's bytes against the quota"
    );

    std::fs::write(fixture.workspace.join("config/bulk.bin"), &contents).unwrap();
    let read = op(&plugin, "raw_bulk_read", b"config/bulk.bin").await;
    assert_eq!(read.outcome, "ok", "{}", read.message);
    assert_eq!(
        read.size,
        contents.len() as u64,
        "the first event gives the size"
    );
    assert_eq!(
        read.names,
        ["done", &format!("write refused: {}", libc::EBADF)],
        "the file is handed over read-only"
    );
    assert!(read.data == contents);
    assert!(std::fs::read(fixture.workspace.join("config/bulk.bin")).unwrap() == contents);
    let copied = op(&plugin, "copy_file", b"config/bulk.bin").await;
    assert_eq!(copied.outcome, "ok", "{}", copied.message);
    assert!(copied.data == contents);

    // The same capability decides: no grant covers secrets/.
    let denied = op(&plugin, "raw_bulk_read", b"secrets/key").await;
    assert_eq!(denied.outcome, "denied", "{denied:?}");
    assert_eq!(denied.capability, "read:secrets/key");
    let denied = op_with(&plugin, "write_from", b"secrets/new", b"x".to_vec(), 0).await;
    assert_eq!(denied.outcome, "denied", "{denied:?}");
    assert!(!fixture.workspace.join("secrets/new").exists());

    // A revoked grant applies to the next bulk call.
    assert!(fixture.services.policy().revoke("bulk", "read:config/**"));
    let revoked = op(&plugin, "copy_file", b"config/bulk.bin").await;
    assert_eq!(revoked.outcome, "denied", "{revoked:?}");

    // Audited as the reads and writes they are, one record per call.
    fixture.audit_records(6).await;
    assert_eq!(
        audited(&fixture, "bulk", "output/bulk.bin"),
        ["write_file allowed"]
    );
    assert_eq!(
        audited(&fixture, "bulk", "config/bulk.bin"),
        ["read_file allowed", "read_file allowed", "read_file denied"]
    );
    assert_eq!(
        audited(&fixture, "bulk", "secrets/key"),
        ["read_file denied"]
    );
    assert_eq!(
        audited(&fixture, "bulk", "secrets/new"),
        ["write_file denied"]
    );
}

#[tokio::test]
async fn a_bulk_write_past_the_quota_or_not_confirmed_leaves_nothing_behind() {
    let fixture = Fixture::new(Limits {
        write_quota: 1 << 20,
        ..Limits::default()
    });
    fixture.grant("bulk-quota", &GRANTS);
    let (plugin, _connection) = fixture.start("bulk-quota").await;
    let fits = op_with(&plugin, "write_from", b"output/fits", Vec::new(), 600 << 10).await;
    assert_eq!(fits.outcome, "ok", "{}", fits.message);
    // Over the quota: the host stops taking slots, the plugin is told why.
    let over = op_with(&plugin, "write_from", b"output/over", Vec::new(), 600 << 10).await;
    assert_eq!(over.outcome, "exhausted", "{}", over.message);
    assert!(over.message.contains("quota"), "{}", over.message);

    // The data's end not confirmed (a plugin that died or gave up half way), or confirmed
    // with a count the host did not receive: nothing is written.
    let abandoned = op_with(
        &plugin,
        "raw_bulk_write",
        b"output/abandoned",
        b"abandon\nhalf of it".to_vec(),
        0,
    )
    .await;
    assert_eq!(abandoned.outcome, "ok", "{}", abandoned.message);
    assert!(
        abandoned.names[0].starts_with("Cancelled:"),
        "{:?}",
        abandoned.names
    );
    let lied = op_with(
        &plugin,
        "raw_bulk_write",
        b"output/lied",
        b"lie\nsome data".to_vec(),
        0,
    )
    .await;
    assert!(lied.names[0].starts_with("DataLoss:"), "{:?}", lied.names);
    let confirmed = op_with(
        &plugin,
        "raw_bulk_write",
        b"output/confirmed",
        b"confirm\nall of it".to_vec(),
        0,
    )
    .await;
    assert_eq!(confirmed.names, ["ok 9"], "{confirmed:?}");
    assert_eq!(
        std::fs::read(fixture.workspace.join("output/confirmed")).unwrap(),
        b"all of it"
    );

    let mut left: Vec<_> = std::fs::read_dir(fixture.workspace.join("output"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["confirmed", "fits"], "no temporary file is left");
    assert_eq!(
        fixture.services.bytes_written("bulk-quota"),
        (600 << 10) + 9,
        "what was not written is given back to the quota"
    );
    // Every failed write is audited, with why.
    let records = fixture.audit_records(5).await;
    for resource in ["output/over", "output/abandoned", "output/lied"] {
        let record = records
            .iter()
            .find(|line| line["resource"] == resource)
            .unwrap_or_else(|| panic!("no record for {resource}: {records:?}"));
        assert_eq!(record["operation"], "write_file");
        assert!(
            record["reason"].as_str().unwrap_or("").contains("failed"),
            "{record}"
        );
    }
}

#[tokio::test]
async fn a_plugin_that_abuses_its_ring_or_channel_holds_nothing_of_the_host() {
    let fixture = Fixture::new(Limits {
        stall_timeout: Duration::from_secs(1),
        ..Limits::default()
    });
    fixture.grant("hoarder", &GRANTS);
    let (plugin, _connection) = fixture.start("hoarder").await;
    for _ in 0..3 {
        let opened = op(&plugin, "bulk_write_stall", b"output/stalled").await;
        assert_eq!(opened.outcome, "ok", "{}", opened.message);
    }
    // The host gives up on each write after the stall timeout and frees its slot...
    assert!(
        eventually(PATIENCE, || fixture.services.calls_in_flight("hoarder")
            == 0)
        .await,
        "the stalled writes still hold {} slots",
        fixture.services.calls_in_flight("hoarder")
    );
    // ... says why to the plugin, and leaves nothing behind.
    let drained = op(&plugin, "drain_bulk", b"").await;
    assert_eq!(drained.names.len(), 3, "{drained:?}");
    for ending in &drained.names {
        assert!(
            ending.starts_with("DeadlineExceeded:") && ending.contains("moved nothing"),
            "{ending}"
        );
    }
    let left = std::fs::read_dir(fixture.workspace.join("output"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "no temporary file is left");
    assert_eq!(fixture.services.bytes_written("hoarder"), 0);

    // The ring's memory cannot be pulled from under the host, and a record that does not
    // fit the ring ends the write, with nothing written.
    let abused = op(&plugin, "ring_abuse", b"output/abused").await;
    assert_eq!(abused.outcome, "ok", "{}", abused.message);
    assert!(
        abused.names[0].starts_with("shrink refused"),
        "{:?}",
        abused.names
    );
    assert!(
        abused.names[1].starts_with("InvalidArgument:") && abused.names[1].contains("slot 9"),
        "{:?}",
        abused.names
    );
    assert!(!fixture.workspace.join("output/abused").exists());
    assert_eq!(
        std::fs::read_dir(fixture.workspace.join("output"))
            .unwrap()
            .count(),
        0,
        "no temporary file is left"
    );

    // The host's end of the channel takes nothing from the plugin.
    let pushed = op(&plugin, "push_into_channel", b"").await;
    assert!(
        pushed.message.starts_with("refused:"),
        "the host's end took data: {pushed:?}"
    );

    // And the host still serves the plugin.
    let read = op(&plugin, "raw_bulk_read", b"config/a.txt").await;
    assert_eq!(read.outcome, "ok", "{}", read.message);
    assert_eq!(read.data, b"config a");
}
