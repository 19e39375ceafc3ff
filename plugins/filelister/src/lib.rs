//! filelister, a tether demo plugin: lists a directory of its workspace through the host's
//! `ReadDir` and writes the listing back as a report through `WriteFile`, creating the
//! report directory with `CreateDir` the first time. Then it announces the report on the
//! host's own message bus (`tether.bus.v1`, topic [`REPORT_TOPIC`]), on the same connection.
//!
//! It never touches a file itself: every access is a host-service call, checked against
//! the capabilities the operator granted it (its `plugin.toml` asks for `read:docs/**`,
//! `write:reports/**` and `bus:publish:reports`) and audited by the host. Under tether's
//! sandbox it could not open a file directly if it tried.

use tether_demo_contract::bus::PublishRequest;
use tether_demo_contract::bus::bus_client::BusClient;
use tether_demo_contract::filelister::file_lister_server::{FileLister, FileListerServer};
use tether_demo_contract::filelister::{
    Announcement, HANDSHAKE, ListFilesRequest, ListFilesResponse, ListedFile, VERSION,
};
use tether_plugin_sdk::protocol::hostserve::EntryKind;
use tether_plugin_sdk::tonic::{Request, Response, Status};
use tether_plugin_sdk::{CallHost, Host, HostCallError, HostFiles, Plugin, Routes, WithHost};

/// The directory of the workspace where reports go.
pub const REPORT_DIR: &str = "reports";

/// The topic of the host's bus on which a written report is announced.
pub const REPORT_TOPIC: &str = "reports";

/// The plugin, ready to [`Plugin::run`]: `FileLister` on the demo's protocol version, with
/// host services.
pub fn plugin() -> Plugin<WithHost> {
    let (plugin, host) = Plugin::new(HANDSHAKE).with_host_services();
    plugin.version(
        VERSION,
        Routes::new(FileListerServer::new(FileListerService { host })),
    )
}

/// The `FileLister` service.
#[derive(Debug, Clone)]
pub struct FileListerService {
    host: Host,
}

#[tether_plugin_sdk::tonic::async_trait]
impl FileLister for FileListerService {
    async fn list_files(
        &self,
        request: Request<ListFilesRequest>,
    ) -> Result<Response<ListFilesResponse>, Status> {
        // The host's request id and deadline go on to every host-service call below.
        let host = self.host.for_call(&request);
        let files = host.files()?;
        let request_id = host.context().request_id().unwrap_or_default().to_owned();
        let dir = request.into_inner().dir;
        match list_and_report(&files, &dir).await {
            Ok(response) => {
                tracing::info!(
                    dir,
                    request_id,
                    entries = response.files.len(),
                    written_to = response.written_to,
                    "listed a directory and wrote the report"
                );
                let message = format!("report written to {}", response.written_to);
                let announced = announce(&host, REPORT_TOPIC, message).await;
                Ok(Response::new(ListFilesResponse {
                    request_id,
                    announced: Some(announced),
                    ..response
                }))
            }
            Err(err) => {
                tracing::warn!(dir, request_id, %err, "could not list the directory");
                Err(err.into())
            }
        }
    }
}

/// Lists `dir` through `files` and writes the report to `reports/<dir>.txt` (with `/` in
/// `dir` written as `_`).
pub async fn list_and_report(
    files: &HostFiles,
    dir: &str,
) -> Result<ListFilesResponse, HostCallError> {
    let mut entries = files.read_dir(dir).await?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let listed: Vec<ListedFile> = entries
        .into_iter()
        .map(|entry| ListedFile {
            is_dir: entry.kind() == EntryKind::Dir,
            size: entry.size,
            name: entry.name,
        })
        .collect();
    let report = render(dir, &listed);
    match files.create_dir(REPORT_DIR).await {
        Ok(()) | Err(HostCallError::AlreadyExists(_)) => {}
        Err(err) => return Err(err),
    }
    let written_to = format!("{REPORT_DIR}/{}.txt", dir.replace('/', "_"));
    files.write_file(&written_to, report.as_bytes()).await?;
    Ok(ListFilesResponse {
        files: listed,
        report,
        written_to,
        request_id: String::new(),
        announced: None,
    })
}

/// Publishes `message` on `topic` of the host's bus, through `host` (so the publish
/// carries the request id and deadline of the call being served), and says how it went.
/// A failure, such as a denial, is reported in the [`Announcement`] and logged, never
/// returned: the report is written either way.
pub async fn announce(host: &CallHost, topic: &str, message: String) -> Announcement {
    let published = match host.client(BusClient::new) {
        Ok(mut bus) => bus
            .publish(PublishRequest {
                topic: topic.to_owned(),
                payload: message.clone().into_bytes(),
            })
            .await
            .map(|response| response.into_inner().delivered)
            .map_err(HostCallError::from),
        Err(err) => Err(err.into()),
    };
    let mut announced = Announcement {
        topic: topic.to_owned(),
        message,
        ..Announcement::default()
    };
    match published {
        Ok(delivered) => announced.delivered = delivered,
        Err(err) => {
            tracing::warn!(
                topic,
                request_id = host.context().request_id().unwrap_or_default(),
                %err,
                "could not announce the report on the host's bus"
            );
            if let HostCallError::Denied { capability, .. } = &err {
                announced.missing_capability.clone_from(capability);
            }
            announced.error = err.to_string();
        }
    }
    announced
}

/// The report: a header line, then one line per entry (directories end in `/`).
pub fn render(dir: &str, files: &[ListedFile]) -> String {
    let width = files
        .iter()
        .map(|file| file.name.chars().count() + usize::from(file.is_dir))
        .max()
        .unwrap_or(0);
    let mut report = format!(
        "{dir}: {} {}\n",
        files.len(),
        if files.len() == 1 { "entry" } else { "entries" }
    );
    for file in files {
        let name = if file.is_dir {
            format!("{}/", file.name)
        } else {
            file.name.clone()
        };
        if file.is_dir {
            report.push_str(&format!("  {name}\n"));
        } else {
            report.push_str(&format!("  {name:<width$}  {:>6} B\n", file.size));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tether_demo_contract::bus::bus_server::{Bus, BusServer};
    use tether_demo_contract::bus::{Message, PublishRequest, PublishResponse, SubscribeRequest};
    use tether_hostserve::{
        Audit, CapabilityKind, Gate, HostServices as Services, Limits, Need, Policy, Resource,
    };
    use tether_plugin_sdk::CallContext;

    use super::*;

    /// A stand-in for the demo host's bus (which lives in `tether-demo`, a binary): it
    /// keeps what is published, behind the real gate, so a publish is identified, decided
    /// against `bus:publish:TOPIC` and audited exactly as the demo's is. Delivery to
    /// subscribers is the real bus's business, tested with it and in the e2e demo.
    #[derive(Debug)]
    struct StandInBus {
        gate: Gate,
        published: Mutex<Vec<Message>>,
    }

    impl StandInBus {
        fn new(gate: Gate) -> Self {
            StandInBus {
                gate,
                published: Mutex::default(),
            }
        }
    }

    #[tether_plugin_sdk::tonic::async_trait]
    impl Bus for StandInBus {
        async fn publish(
            &self,
            request: Request<PublishRequest>,
        ) -> Result<Response<PublishResponse>, Status> {
            let topic = request.get_ref().topic.clone();
            let need = Need::new("bus").action("publish").resource(&topic);
            let mut call = self.gate.check(&request, need).await?;
            self.published.lock().unwrap().push(Message {
                topic,
                payload: request.into_inner().payload,
                publisher: call.identity().name().to_owned(),
                missed: 0,
            });
            call.finish(Ok(Response::new(PublishResponse { delivered: 1 })))
        }

        type SubscribeStream = futures_util::stream::Empty<Result<Message, Status>>;

        async fn subscribe(
            &self,
            request: Request<SubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            let topic = request.get_ref().topic.clone();
            let need = Need::new("bus").action("subscribe").resource(&topic);
            let mut call = self.gate.check(&request, need).await?;
            call.finish(Err(Status::unimplemented(
                "the stand-in bus only publishes",
            )))
        }
    }

    /// A workspace with `docs/`, real host services over it (the files, and the bus
    /// stand-in) granting `grants` to filelister, and the audit file.
    struct Fixture {
        dir: tempfile::TempDir,
        services: Services,
        bus: Arc<StandInBus>,
        local: tether_hostconn::InProcess,
    }

    async fn host(grants: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(workspace.join("docs/drafts")).unwrap();
        std::fs::write(workspace.join("docs/guide.md"), "# Guide\n").unwrap();
        std::fs::write(workspace.join("docs/a.txt"), "a").unwrap();
        let bus_kind = CapabilityKind::new("bus")
            .actions(["publish", "subscribe"])
            .resource(Resource::PATH);
        let policy = Policy::with_kinds([bus_kind]).unwrap();
        policy.set_workspace("filelister", &workspace);
        for grant in grants {
            policy.grant("filelister", grant).unwrap();
        }
        let audit = Audit::to_file(dir.path().join("audit.jsonl"), 1 << 20).unwrap();
        // The file services and the bus stand-in, behind one gate, as a host serves them.
        let gate = Gate::new(policy, audit, Limits::default());
        let bus = Arc::new(StandInBus::new(gate.clone()));
        let services = Services::from_gate(gate).serve(BusServer::from_arc(Arc::clone(&bus)));
        let local = tether_hostconn::in_process("filelister", services.routes())
            .await
            .unwrap();
        Fixture {
            dir,
            services,
            bus,
            local,
        }
    }

    impl Fixture {
        /// The plugin's handle on these host services.
        fn host(&self) -> Host {
            Host::from_channel(self.local.channel())
        }

        fn files(&self) -> HostFiles {
            self.host().files().unwrap()
        }

        fn read(&self, path: &str) -> String {
            std::fs::read_to_string(self.dir.path().join("workspace").join(path)).unwrap()
        }

        /// The audit records so far (the writer thread may lag a little).
        async fn audit(&self, at_least: usize) -> Vec<serde_json::Value> {
            for _ in 0..200 {
                let text = std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
                    .unwrap_or_default();
                let records: Vec<serde_json::Value> = text
                    .lines()
                    .map(|line| serde_json::from_str(line).unwrap())
                    .collect();
                if records.len() >= at_least {
                    return records;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("fewer than {at_least} audit records");
        }
    }

    #[tokio::test]
    async fn lists_through_the_host_and_writes_the_report_back() {
        let host = host(&["read:docs/**", "write:reports/**"]).await;
        let response = list_and_report(&host.files(), "docs").await.unwrap();
        let names: Vec<_> = response.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "drafts", "guide.md"]);
        assert_eq!(response.written_to, "reports/docs.txt");
        assert_eq!(
            response.report,
            "docs: 3 entries\n  a.txt          1 B\n  drafts/\n  guide.md       8 B\n"
        );
        assert_eq!(host.read("reports/docs.txt"), response.report);

        // A second run finds the report directory and replaces the report.
        list_and_report(&host.files(), "docs/drafts").await.unwrap();
        assert_eq!(
            host.read("reports/docs_drafts.txt"),
            "docs/drafts: 0 entries\n"
        );
        let ops: Vec<_> = host
            .audit(6)
            .await
            .iter()
            .map(|r| r["operation"].clone())
            .collect();
        assert_eq!(
            ops,
            [
                "read_dir",
                "create_dir",
                "write_file",
                "read_dir",
                "create_dir",
                "write_file"
            ]
        );
    }

    #[tokio::test]
    async fn without_the_write_grant_it_lists_but_is_denied_the_report() {
        let host = host(&["read:docs/**"]).await;
        let err = list_and_report(&host.files(), "docs").await.unwrap_err();
        match err {
            HostCallError::Denied { capability, .. } => assert_eq!(capability, "write:reports"),
            other => panic!("expected a denial, got {other}"),
        }
        assert!(!host.dir.path().join("workspace/reports").exists());
        let records = host.audit(2).await;
        assert_eq!(records[0]["decision"], "allowed");
        assert_eq!(records[1]["decision"], "denied");
        assert_eq!(host.services.bytes_written("filelister"), 0);
    }

    /// `ListFiles` on `docs`, as the host calls it: with a request id and a deadline.
    async fn list_docs(host: &Fixture, request_id: &str) -> ListFilesResponse {
        let service = FileListerService { host: host.host() };
        let request = CallContext::new()
            .with_request_id(request_id)
            .unwrap()
            .with_timeout(std::time::Duration::from_secs(30))
            .request(ListFilesRequest {
                dir: "docs".into(),
                color: false,
            })
            .unwrap();
        service.list_files(request).await.unwrap().into_inner()
    }

    #[tokio::test]
    async fn the_request_id_and_deadline_reach_the_audit_records() {
        let host = host(&["read:docs/**", "write:reports/**", "bus:publish:reports"]).await;
        let response = list_docs(&host, "test-42").await;
        assert_eq!(response.request_id, "test-42");
        assert_eq!(response.written_to, "reports/docs.txt");
        let records = host.audit(4).await;
        assert_eq!(records.len(), 4, "{records:#?}");
        for record in records {
            assert_eq!(record["request_id"], "test-42", "{record}");
            let left = record["timeout_ms"].as_u64().unwrap();
            assert!(left > 0 && left <= 30_000, "{record}");
        }
    }

    #[tokio::test]
    async fn the_written_report_is_announced_on_the_bus() {
        let host = host(&["read:docs/**", "write:reports/**", "bus:publish:reports"]).await;
        let response = list_docs(&host, "test-bus").await;
        assert_eq!(
            response.announced,
            Some(Announcement {
                topic: REPORT_TOPIC.into(),
                message: "report written to reports/docs.txt".into(),
                delivered: 1,
                ..Announcement::default()
            })
        );
        // The host, not the plugin, names the publisher.
        let published = host.bus.published.lock().unwrap().clone();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].topic, "reports");
        assert_eq!(published[0].publisher, "filelister");
        assert_eq!(published[0].payload, b"report written to reports/docs.txt");
        let records = host.audit(4).await;
        let publish = &records[3];
        assert_eq!(
            publish["operation"], "tether.bus.v1.Bus/Publish",
            "{publish}"
        );
        assert_eq!(publish["resource"], "reports");
        assert_eq!(publish["decision"], "allowed");
        assert_eq!(publish["capability"], "bus:publish:reports");
        assert_eq!(publish["request_id"], "test-bus");
    }

    #[tokio::test]
    async fn without_the_bus_grant_the_report_is_written_and_the_denial_reported() {
        let host = host(&["read:docs/**", "write:reports/**"]).await;
        let response = list_docs(&host, "test-nobus").await;
        assert_eq!(host.read("reports/docs.txt"), response.report);
        let announced = response.announced.unwrap();
        assert_eq!(announced.missing_capability, "bus:publish:reports");
        assert!(
            announced
                .error
                .starts_with("denied: missing capability `bus:publish:reports`"),
            "{}",
            announced.error
        );
        assert_eq!(announced.delivered, 0);
        assert!(host.bus.published.lock().unwrap().is_empty());
        let records = host.audit(4).await;
        assert_eq!(records[3]["operation"], "tether.bus.v1.Bus/Publish");
        assert_eq!(records[3]["decision"], "denied");
        assert_eq!(records[3]["request_id"], "test-nobus");
    }

    #[test]
    fn an_empty_directory_and_a_single_entry_read_well() {
        assert_eq!(render("x", &[]), "x: 0 entries\n");
        let one = [ListedFile {
            name: "only.txt".into(),
            size: 1234,
            is_dir: false,
        }];
        assert_eq!(render("x", &one), "x: 1 entry\n  only.txt    1234 B\n");
    }
}
