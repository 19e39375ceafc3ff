//! The audit trail: one JSON line per decision, to a file the host chooses and as a
//! `tracing` event (target `tether::audit`). Records go through a bounded queue to a
//! writer thread, so a call never waits on the disk; if the queue is full the record is
//! counted as dropped (and the `tracing` event still fires). The file is bounded: past
//! its size limit it is renamed to `<file>.1` and a new one is started.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

use serde::Serialize;

/// Records waiting for the writer thread at most.
const QUEUE: usize = 4096;

/// One decision.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// When, RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// The plugin's name, as the host knows it.
    pub plugin: String,
    /// The plugin's instance number.
    pub instance: u64,
    /// The calling process (for `connect`, the process that was refused).
    pub pid: u32,
    /// The operation: `read_dir`, `read_file`, `write_file`, `delete_file`, `get_env`, `stat`,
    /// `create_dir`, `connect` (a refused connection to the plugin's host-service socket: from
    /// another process, or past the plugin's connection limit), or `unknown` (a call to no
    /// known method, refused past the plugin's open-call limit).
    pub operation: &'static str,
    /// The path or variable, as requested (escaped if not UTF-8, capped).
    pub resource: String,
    /// `allowed` or `denied`.
    pub decision: &'static str,
    /// Why: the grant that allowed it, or what denied it, and how the operation ended.
    pub reason: String,
    /// The request id the call carried (`tether-request-id`), if any: the plugin passes on
    /// the id of the host's call it is working for. A correlation aid, not an identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The time the caller had left (its `grpc-timeout`) when the call arrived, if it set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl AuditRecord {
    pub(crate) fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }
}

/// Where audit records go. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    sender: Option<SyncSender<AuditRecord>>,
    dropped: Arc<AtomicU64>,
}

impl Audit {
    /// Records only as `tracing` events.
    pub fn tracing_only() -> Self {
        Audit {
            sender: None,
            dropped: Arc::default(),
        }
    }

    /// Appends records to `path` as JSON lines (and emits them as `tracing` events); the file
    /// is rotated to `<path>.1` when it passes `max_bytes`.
    pub fn to_file(path: impl Into<PathBuf>, max_bytes: u64) -> io::Result<Self> {
        let path = path.into();
        let file = open(&path)?;
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("tether-audit".into())
            .spawn(move || write_records(&path, file, max_bytes, &receiver))?;
        Ok(Audit {
            sender: Some(sender),
            dropped: Arc::default(),
        })
    }

    /// Records that could not be queued for the file because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, record: AuditRecord) {
        if record.decision == "denied" {
            tracing::warn!(target: "tether::audit", plugin = record.plugin, instance = record.instance,
                operation = record.operation, resource = record.resource, decision = record.decision,
                reason = record.reason, request_id = record.request_id, timeout_ms = record.timeout_ms,
                "host service call denied");
        } else {
            tracing::info!(target: "tether::audit", plugin = record.plugin, instance = record.instance,
                operation = record.operation, resource = record.resource, decision = record.decision,
                reason = record.reason, request_id = record.request_id, timeout_ms = record.timeout_ms,
                "host service call allowed");
        }
        if let Some(sender) = &self.sender {
            match sender.try_send(record) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(target: "tether::audit", dropped, "the audit file writer is behind; a record was not written to the file");
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn open(path: &Path) -> io::Result<BufWriter<File>> {
    Ok(BufWriter::new(
        OpenOptions::new().create(true).append(true).open(path)?,
    ))
}

fn write_records(
    path: &Path,
    file: BufWriter<File>,
    max_bytes: u64,
    receiver: &Receiver<AuditRecord>,
) {
    let mut file = file;
    let mut size = file.get_ref().metadata().map(|m| m.len()).unwrap_or(0);
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            let mut line = serde_json::to_vec(&record).unwrap_or_default();
            line.push(b'\n');
            if size + line.len() as u64 > max_bytes && size > 0 {
                let _ = file.flush();
                let mut rotated = path.as_os_str().to_owned();
                rotated.push(".1");
                let reopened = std::fs::rename(path, &rotated).and_then(|()| open(path));
                match reopened {
                    Ok(new) => {
                        file = new;
                        size = 0;
                    }
                    Err(err) => {
                        tracing::warn!(target: "tether::audit", %err, path = %path.display(), "could not rotate the audit file")
                    }
                }
            }
            match file.write_all(&line) {
                Ok(()) => size += line.len() as u64,
                Err(err) => {
                    tracing::warn!(target: "tether::audit", %err, path = %path.display(), "could not write the audit file")
                }
            }
            next = receiver.try_recv().ok();
        }
        // The queue is empty: make what was written visible.
        if let Err(err) = file.flush() {
            tracing::warn!(target: "tether::audit", %err, path = %path.display(), "could not flush the audit file");
        }
    }
}
