//! colorlister, a tether demo plugin: lists a directory of its workspace through the host's
//! `ReadDir`, reads each file through `ReadFile`, and returns a colored listing with each
//! file's line count and first line.
//!
//! It shows context propagation: the request id and the deadline of the host's call travel
//! on, through the call's view of the host ([`Host::for_call`]), into every host-service
//! call the plugin makes for it, so
//! the host's audit records and the plugin's log lines carry the same id, and the plugin's
//! calls give up when the host's caller would.
//!
//! After listing, it announces the listing on the host's own message bus
//! (`tether.bus.v1`, topic [`LISTING_TOPIC`]). Its `plugin.toml` asks for `read:docs/**`
//! and `bus:publish:reports`, but requests are not grants: if the operator does not grant
//! the bus, the host denies the publish, and colorlister says so in its response
//! (`announced`) and still answers with its listing.

use std::fmt::Write as _;

use tether_demo_contract::bus::PublishRequest;
use tether_demo_contract::bus::bus_client::BusClient;
use tether_demo_contract::filelister::file_lister_server::{FileLister, FileListerServer};
use tether_demo_contract::filelister::{
    Announcement, HANDSHAKE, ListFilesRequest, ListFilesResponse, ListedFile, VERSION,
};
use tether_plugin_sdk::protocol::hostserve::EntryKind;
use tether_plugin_sdk::tonic::{Request, Response, Status};
use tether_plugin_sdk::{CallHost, Host, HostCallError, HostFiles, Plugin, Routes, WithHost};

/// The topic of the host's bus on which a listing is announced.
pub const LISTING_TOPIC: &str = "reports";

/// What colorlister announces on [`LISTING_TOPIC`].
pub const LISTING_MESSAGE: &str = "colors listed";

/// Files larger than this are listed without a preview.
pub const PREVIEW_CAP: usize = 64 * 1024;

/// The longest first line shown, in characters.
const PREVIEW_WIDTH: usize = 40;

/// The plugin, ready to [`Plugin::run`]: `FileLister` on the demo's protocol version, with
/// host services.
pub fn plugin() -> Plugin<WithHost> {
    let (plugin, host) = Plugin::new(HANDSHAKE).with_host_services();
    plugin.version(
        VERSION,
        Routes::new(FileListerServer::new(ColorListerService { host })),
    )
}

/// The `FileLister` service.
#[derive(Debug, Clone)]
pub struct ColorListerService {
    host: Host,
}

#[tether_plugin_sdk::tonic::async_trait]
impl FileLister for ColorListerService {
    async fn list_files(
        &self,
        request: Request<ListFilesRequest>,
    ) -> Result<Response<ListFilesResponse>, Status> {
        // The host's request id and deadline go on to every host-service call below.
        let host = self.host.for_call(&request);
        let context = host.context();
        let request_id = context.request_id().unwrap_or_default().to_owned();
        let deadline_ms = context.remaining().map(|left| left.as_millis());
        let ListFilesRequest { dir, color } = request.into_inner();
        tracing::info!(dir, request_id, deadline_ms, "listing a directory");
        let files = host.files()?;
        match list(&files, &dir, color).await {
            Ok(response) => {
                let announced = announce(&host, LISTING_TOPIC, LISTING_MESSAGE.to_owned()).await;
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

/// One file's line count and first line, read through the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// Lines in the file.
    pub lines: usize,
    /// The first non-empty line, shortened to 40 characters.
    pub first: String,
}

/// Lists `dir` through `files`, reading every file for its preview.
pub async fn list(
    files: &HostFiles,
    dir: &str,
    color: bool,
) -> Result<ListFilesResponse, HostCallError> {
    let mut entries = files.read_dir(dir).await?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let mut listed = Vec::with_capacity(entries.len());
    let mut previews = Vec::with_capacity(entries.len());
    for entry in entries {
        let is_dir = entry.kind() == EntryKind::Dir;
        let preview = if entry.kind() == EntryKind::File {
            let path = format!("{dir}/{}", entry.name);
            match files.read_file_to_vec(&path, PREVIEW_CAP).await {
                Ok(contents) => Some(preview(&contents)),
                Err(HostCallError::TooLarge { .. }) => None,
                Err(err) => return Err(err),
            }
        } else {
            None
        };
        previews.push(preview);
        listed.push(ListedFile {
            name: entry.name,
            size: entry.size,
            is_dir,
        });
    }
    let report = render(dir, &listed, &previews, color);
    Ok(ListFilesResponse {
        files: listed,
        report,
        written_to: String::new(),
        request_id: String::new(),
        announced: None,
    })
}

/// Publishes `message` on `topic` of the host's bus, through `host` (so the publish
/// carries the request id and deadline of the call being served), and says how it went.
/// A failure, such as a denial, is reported in the [`Announcement`] and logged, never
/// returned: the listing is the result either way.
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
                "could not announce the listing on the host's bus"
            );
            if let HostCallError::Denied { capability, .. } = &err {
                announced.missing_capability.clone_from(capability);
            }
            announced.error = err.to_string();
        }
    }
    announced
}

/// The line count and first non-empty line of `contents`.
pub fn preview(contents: &[u8]) -> Preview {
    let text = String::from_utf8_lossy(contents);
    let first = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or_default();
    let mut shown: String = first.chars().take(PREVIEW_WIDTH).collect();
    if first.chars().count() > PREVIEW_WIDTH {
        shown.push('…');
    }
    Preview {
        lines: text.lines().count(),
        first: shown,
    }
}

/// ANSI color of a name: directories bold blue, then by extension.
fn paint(name: &str, is_dir: bool) -> &'static str {
    if is_dir {
        return "\x1b[1;34m";
    }
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("md") => "\x1b[36m",
        Some("toml" | "json" | "yaml") => "\x1b[33m",
        Some("txt") => "\x1b[32m",
        _ => "\x1b[0m",
    }
}

/// The listing: a header line, then one line per entry, colored if `color`.
pub fn render(
    dir: &str,
    files: &[ListedFile],
    previews: &[Option<Preview>],
    color: bool,
) -> String {
    let names: Vec<String> = files
        .iter()
        .map(|file| {
            if file.is_dir {
                format!("{}/", file.name)
            } else {
                file.name.clone()
            }
        })
        .collect();
    let width = names
        .iter()
        .map(|name| name.chars().count())
        .max()
        .unwrap_or(0);
    let mut report = format!(
        "{dir}: {} {}\n",
        files.len(),
        if files.len() == 1 { "entry" } else { "entries" }
    );
    for ((file, name), preview) in files.iter().zip(&names).zip(previews) {
        let padded = format!("{name:<width$}");
        let name = if color {
            format!("{}{padded}\x1b[0m", paint(&file.name, file.is_dir))
        } else {
            padded
        };
        let detail = match preview {
            Some(Preview { lines, first }) => {
                let lines = format!("{lines:>3} {}", if *lines == 1 { "line " } else { "lines" });
                if color {
                    format!("{lines}  \x1b[2m{first}\x1b[0m")
                } else {
                    format!("{lines}  {first}")
                }
            }
            None if file.is_dir => String::new(),
            None => format!("{} B, no preview", file.size),
        };
        let line = format!("  {name}  {detail}");
        let _ = writeln!(report, "{}", line.trim_end());
    }
    report
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

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

    struct Fixture {
        dir: tempfile::TempDir,
        bus: Arc<StandInBus>,
        local: tether_hostconn::InProcess,
    }

    async fn host(grants: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(workspace.join("docs/sub")).unwrap();
        std::fs::create_dir_all(workspace.join("secrets")).unwrap();
        std::fs::write(workspace.join("docs/guide.md"), "\n# Guide\n\nRead me.\n").unwrap();
        std::fs::write(workspace.join("docs/big.bin"), vec![b'x'; PREVIEW_CAP + 1]).unwrap();
        std::fs::write(workspace.join("secrets/key"), "SECRET").unwrap();
        let bus_kind = CapabilityKind::new("bus")
            .actions(["publish", "subscribe"])
            .resource(Resource::PATH);
        let policy = Policy::with_kinds([bus_kind]).unwrap();
        policy.set_workspace("colorlister", &workspace);
        for grant in grants {
            policy.grant("colorlister", grant).unwrap();
        }
        let audit = Audit::to_file(dir.path().join("audit.jsonl"), 1 << 20).unwrap();
        // The file services and the bus stand-in, behind one gate, as a host serves them.
        let gate = Gate::new(policy, audit, Limits::default());
        let bus = Arc::new(StandInBus::new(gate.clone()));
        let services = Services::from_gate(gate).serve(BusServer::from_arc(Arc::clone(&bus)));
        let local = tether_hostconn::in_process("colorlister", services.routes())
            .await
            .unwrap();
        Fixture { dir, bus, local }
    }

    impl Fixture {
        /// The plugin's handle on these host services.
        fn host(&self) -> Host {
            Host::from_channel(self.local.channel())
        }

        fn files(&self) -> HostFiles {
            self.host().files().unwrap()
        }

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
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("fewer than {at_least} audit records");
        }
    }

    #[tokio::test]
    async fn reads_each_file_through_the_host() {
        let host = host(&["read:docs/**"]).await;
        let response = list(&host.files(), "docs", false).await.unwrap();
        assert_eq!(
            response.report,
            "docs: 3 entries\n  big.bin   65537 B, no preview\n  guide.md    4 lines  # Guide\n  sub/\n"
        );
        // One ReadDir, then one ReadFile per file (directories are not read).
        let ops: Vec<_> = host
            .audit(3)
            .await
            .iter()
            .map(|r| (r["operation"].clone(), r["resource"].clone()))
            .collect();
        assert_eq!(
            ops,
            [
                ("read_dir".into(), "docs".into()),
                ("read_file".into(), "docs/big.bin".into()),
                ("read_file".into(), "docs/guide.md".into()),
            ]
        );
    }

    #[tokio::test]
    async fn colors_only_when_asked() {
        let host = host(&["read:docs/**"]).await;
        let colored = list(&host.files(), "docs", true).await.unwrap().report;
        assert!(colored.contains("\x1b[36mguide.md"), "{colored:?}");
        assert!(colored.contains("\x1b[1;34msub/"), "{colored:?}");
        let plain = list(&host.files(), "docs", false).await.unwrap().report;
        assert!(!plain.contains('\x1b'), "{plain:?}");
    }

    #[tokio::test]
    async fn an_ungranted_directory_is_denied_by_the_host() {
        let host = host(&["read:docs/**"]).await;
        match list(&host.files(), "secrets", false).await.unwrap_err() {
            HostCallError::Denied { capability, .. } => assert_eq!(capability, "read:secrets"),
            other => panic!("expected a denial, got {other}"),
        }
        assert_eq!(host.audit(1).await[0]["decision"], "denied");
    }

    /// `ListFiles` on `docs`, as the host calls it: with a request id and a deadline.
    async fn list_docs(host: &Fixture, request_id: &str) -> Result<ListFilesResponse, Status> {
        let service = ColorListerService { host: host.host() };
        let request = CallContext::new()
            .with_request_id(request_id)
            .unwrap()
            .with_timeout(Duration::from_secs(20))
            .request(ListFilesRequest {
                dir: "docs".into(),
                color: false,
            })
            .unwrap();
        Ok(service.list_files(request).await?.into_inner())
    }

    #[tokio::test]
    async fn a_denied_announcement_leaves_the_listing_whole() {
        // The manifest requests bus:publish:reports; this operator did not grant it.
        let host = host(&["read:docs/**"]).await;
        let response = list_docs(&host, "color-bus").await.unwrap();
        assert!(response.report.starts_with("docs: 3 entries\n"));
        assert_eq!(response.files.len(), 3);
        let announced = response.announced.unwrap();
        assert_eq!(announced.topic, "reports");
        assert_eq!(announced.message, "colors listed");
        assert_eq!(announced.missing_capability, "bus:publish:reports");
        assert!(
            announced
                .error
                .starts_with("denied: missing capability `bus:publish:reports`"),
            "{}",
            announced.error
        );
        assert!(host.bus.published.lock().unwrap().is_empty());
        let records = host.audit(4).await;
        let publish = &records[3];
        assert_eq!(
            publish["operation"], "tether.bus.v1.Bus/Publish",
            "{publish}"
        );
        assert_eq!(publish["decision"], "denied");
        assert_eq!(publish["capability"], "bus:publish:reports");
        assert_eq!(publish["request_id"], "color-bus");
    }

    #[tokio::test]
    async fn granted_the_bus_it_announces_the_listing() {
        let host = host(&["read:docs/**", "bus:publish:reports"]).await;
        let announced = list_docs(&host, "color-ok").await.unwrap().announced;
        assert_eq!(
            announced,
            Some(Announcement {
                topic: "reports".into(),
                message: "colors listed".into(),
                delivered: 1,
                ..Announcement::default()
            })
        );
        let published = host.bus.published.lock().unwrap().clone();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].publisher, "colorlister");
        assert_eq!(published[0].payload, b"colors listed");
    }

    #[tokio::test]
    async fn the_callers_context_reaches_every_host_call() {
        let host = host(&["read:docs/**"]).await;
        let response = list_docs(&host, "color-7").await.unwrap();
        assert_eq!(response.request_id, "color-7");
        // ReadDir, two ReadFile, and the (denied) publish.
        let records = host.audit(4).await;
        assert_eq!(records.len(), 4);
        for record in records {
            assert_eq!(record["request_id"], "color-7", "{record}");
            let left = record["timeout_ms"].as_u64().unwrap();
            assert!(left > 0 && left <= 20_000, "{record}");
        }

        // Once the caller's deadline has passed, the plugin's next call is not even sent.
        let late = CallContext::new().with_timeout(Duration::ZERO);
        let late = host.host().with_context(&late).files().unwrap();
        match list(&late, "docs", false).await.unwrap_err() {
            HostCallError::Other { code, .. } => {
                assert_eq!(code, tether_plugin_sdk::tonic::Code::DeadlineExceeded);
            }
            other => panic!("expected a deadline error, got {other}"),
        }
    }

    #[test]
    fn previews_take_the_first_non_empty_line() {
        assert_eq!(
            preview(b"\n\n  hello  \nworld"),
            Preview {
                lines: 4,
                first: "hello".into()
            }
        );
        let long = "y".repeat(50);
        assert_eq!(
            preview(long.as_bytes()).first.chars().count(),
            PREVIEW_WIDTH + 1
        );
        assert_eq!(preview(b"").lines, 0);
    }
}
