//! Real plugins of the Go ecosystem under a tether host, started the way their own hosts
//! start them: a Terraform provider built on HashiCorp's terraform-plugin-framework, and
//! a Grafana backend data source built on Grafana's grafana-plugin-sdk-go.
//!
//! Both programs are small and our own (in `tests/go/realworld/`, one Go module each), but
//! everything between them and the wire is the real thing: the framework or SDK, its
//! go-plugin, its gRPC, its handshake, its logging. They are built with `go build` from
//! the Go module proxy into `<target>/go/realworld/`, once per test run and only when a
//! source is newer than the program. `cargo xtask test` skips these tests, saying so,
//! where the Go toolchain is missing; run directly without it, they fail and say what to
//! install.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tether_host::{PluginClient, Stop};
use tether_plugin_sdk::HandshakeConfig;
use tether_test_contract::pluginv2::check_health_response::HealthStatus;
use tether_test_contract::pluginv2::diagnostics_client::DiagnosticsClient;
use tether_test_contract::pluginv2::{
    CheckHealthRequest, CollectMetricsRequest, DataSourceInstanceSettings, PluginContext,
};
use tether_test_contract::tfplugin6::provider_client::ProviderClient;
use tether_test_contract::tfplugin6::{
    DynamicValue, Schema, configure_provider, diagnostic::Severity, get_metadata,
    get_provider_schema, read_data_source, stop_provider,
};
use tracing::Level;

use crate::support::{PATIENCE, eventually, is_gone, record_events, recorded, sandbox};

/// Terraform's handshake, as terraform-plugin-go's `tf5server` and `tf6server` serve it.
const TERRAFORM: HandshakeConfig = HandshakeConfig::new(
    "TF_PLUGIN_MAGIC_COOKIE",
    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2",
);

/// The plugin protocol versions Terraform offers its providers.
const TERRAFORM_VERSIONS: [u32; 2] = [5, 6];

/// Grafana's handshake, as grafana-plugin-sdk-go's `grpcplugin` serves it.
const GRAFANA: HandshakeConfig = HandshakeConfig::new("grafana_plugin_type", "datasource");

/// The one plugin protocol version of Grafana's backend plugins.
const GRAFANA_VERSION: u32 = 2;

/// One of the Go programs in `tests/go/realworld/`: its module directory and program name.
struct GoProgram {
    module: &'static str,
    program: &'static str,
    built: OnceLock<Result<PathBuf, String>>,
}

static TERRAFORM_PROVIDER: GoProgram = GoProgram {
    module: "terraform",
    program: "terraform-provider-tether",
    built: OnceLock::new(),
};

static GRAFANA_DATASOURCE: GoProgram = GoProgram {
    module: "grafana",
    program: "tether-grafana-datasource",
    built: OnceLock::new(),
};

impl GoProgram {
    /// The program, built if a source is newer than it; panics saying why it could not be.
    fn path(&self) -> PathBuf {
        match self.built.get_or_init(|| self.build()) {
            Ok(path) => path.clone(),
            Err(why) => panic!("{why}"),
        }
    }

    fn build(&self) -> Result<PathBuf, String> {
        let module = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("go/realworld")
            .join(self.module);
        let out = crate::support::bin_dir()
            .parent()
            .expect("the target directory")
            .join("go/realworld");
        let program = out.join(self.module).join(self.program);
        let built = std::fs::metadata(&program).and_then(|m| m.modified()).ok();
        if built.is_some_and(|built| built > crate::interop::go::newest(&module)) {
            return Ok(program);
        }
        // The module's go.mod and go.sum pin every version; the module cache and the Go
        // module proxy are the environment's (GOMODCACHE, GOPROXY).
        #[allow(clippy::disallowed_methods, reason = "builds a real-world Go plugin")]
        let output = Command::new("go")
            .args([
                "build",
                "-trimpath",
                "-buildvcs=false",
                "-mod=readonly",
                "-o",
            ])
            .arg(&program)
            .arg(".")
            .current_dir(&module)
            .env("GOCACHE", out.join("cache"))
            .env("GOFLAGS", "")
            .env("GOTOOLCHAIN", "local")
            .output()
            .map_err(|err| {
                format!(
                    "could not run `go` ({err}): the real-world plugin {} needs Go 1.26 or \
                     newer and the Go module proxy (`cargo xtask test` skips these tests, \
                     saying so, when Go is missing)",
                    self.program
                )
            })?;
        if !output.status.success() {
            return Err(format!(
                "building {} in {} failed ({}); it needs Go 1.26 or newer and the Go \
                 module proxy (or a module cache that holds its go.sum):\n{}",
                self.program,
                module.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(program)
    }
}

/// The names of a schema's top-level attributes.
fn attribute_names(schema: &Schema) -> BTreeSet<&str> {
    schema
        .block
        .iter()
        .flat_map(|block| &block.attributes)
        .map(|attribute| attribute.name.as_str())
        .collect()
}

/// The attribute `name` of a schema.
fn attribute<'a>(
    schema: &'a Schema,
    name: &str,
) -> &'a tether_test_contract::tfplugin6::schema::Attribute {
    schema
        .block
        .iter()
        .flat_map(|block| &block.attributes)
        .find(|attribute| attribute.name == name)
        .unwrap_or_else(|| panic!("no attribute {name} in {schema:#?}"))
}

/// A Terraform value as JSON.
fn json(value: &str) -> DynamicValue {
    DynamicValue {
        msgpack: Vec::new(),
        json: value.as_bytes().to_vec(),
    }
}

/// Whether `bytes` contains `part`.
fn contains(bytes: &[u8], part: &[u8]) -> bool {
    bytes.windows(part.len()).any(|window| window == part)
}

/// What the host said about `plugin` at WARN or ERROR, other than what the plugin itself
/// logged (which arrives as `tether::plugin` events at the plugin's own levels).
fn host_complaints(plugin: &str) -> Vec<String> {
    recorded(plugin)
        .into_iter()
        .filter(|e| e.target != "tether::plugin" && e.level <= Level::WARN)
        .map(|e| {
            format!(
                "{} {} {}: {} {}",
                e.level, e.target, e.plugin, e.message, e.fields
            )
        })
        .collect()
}

#[tokio::test]
async fn a_tether_host_reads_the_schema_and_a_data_source_of_a_terraform_framework_provider() {
    record_events();
    let provider = PluginClient::builder("tf-tether", TERRAFORM_PROVIDER.path())
        .handshake(TERRAFORM)
        .protocol_versions(&TERRAFORM_VERSIONS)
        .auto_mtls(true)
        // Terraform's own limit: provider schemas can be large.
        .max_message_size(256 << 20)
        // Terraform lets providers log (hclog JSON on stderr) at the level TF_LOG names.
        .env("TF_LOG", "TRACE")
        // go-plugin makes a temporary file where it binds its socket.
        .sandbox(sandbox().allow_socket_dir_files(true))
        .start()
        .await
        .expect("the Terraform provider starts under the sandbox");
    assert_eq!(
        provider.protocol_version(),
        6,
        "terraform-plugin-framework serves protocol 6 only"
    );
    assert!(provider.broker().is_some_and(|broker| broker.uses_tls()));
    let mut client = ProviderClient::new(provider.channel());

    let metadata = client
        .get_metadata(get_metadata::Request {})
        .await
        .expect("GetMetadata")
        .into_inner();
    assert!(metadata.diagnostics.is_empty(), "{metadata:#?}");
    let resources: Vec<_> = metadata
        .resources
        .iter()
        .map(|r| r.type_name.as_str())
        .collect();
    let data_sources: Vec<_> = metadata
        .data_sources
        .iter()
        .map(|d| d.type_name.as_str())
        .collect();
    assert_eq!(resources, ["tether_note"], "{metadata:#?}");
    assert_eq!(data_sources, ["tether_greeting"], "{metadata:#?}");

    let schema = client
        .get_provider_schema(get_provider_schema::Request {})
        .await
        .expect("GetProviderSchema")
        .into_inner();
    assert!(
        !schema
            .diagnostics
            .iter()
            .any(|d| d.severity() == Severity::Error),
        "{schema:#?}"
    );
    let capabilities = schema.server_capabilities.as_ref().expect("capabilities");
    assert!(capabilities.plan_destroy && capabilities.get_provider_schema_optional);

    let provider_schema = schema.provider.as_ref().expect("the provider's schema");
    assert_eq!(attribute_names(provider_schema), BTreeSet::from(["prefix"]));
    assert!(attribute(provider_schema, "prefix").optional);

    assert_eq!(
        schema.resource_schemas.keys().collect::<Vec<_>>(),
        ["tether_note"]
    );
    let note = &schema.resource_schemas["tether_note"];
    assert_eq!(
        attribute_names(note),
        BTreeSet::from(["body", "id", "pinned", "tags", "title"])
    );
    let title = attribute(note, "title");
    assert!(title.required && !title.computed, "{title:#?}");
    assert_eq!(title.r#type, br#""string""#);
    let id = attribute(note, "id");
    assert!(id.computed && !id.required && !id.optional, "{id:#?}");
    assert_eq!(attribute(note, "tags").r#type, br#"["list","string"]"#);
    assert_eq!(attribute(note, "pinned").r#type, br#""bool""#);

    assert_eq!(
        schema.data_source_schemas.keys().collect::<Vec<_>>(),
        ["tether_greeting"]
    );
    let greeting = &schema.data_source_schemas["tether_greeting"];
    assert_eq!(
        attribute_names(greeting),
        BTreeSet::from(["greeting", "name"])
    );
    assert!(attribute(greeting, "name").required);
    assert!(attribute(greeting, "greeting").computed);

    // Configured as Terraform configures it, the provider reads a data source: the
    // configuration goes in as JSON, the state comes back as MessagePack, whose strings are
    // their UTF-8 bytes.
    let configured = client
        .configure_provider(configure_provider::Request {
            terraform_version: "1.14.0".into(),
            config: Some(json(r#"{"prefix":"tf: "}"#)),
            client_capabilities: None,
        })
        .await
        .expect("ConfigureProvider")
        .into_inner();
    assert!(configured.diagnostics.is_empty(), "{configured:#?}");
    let read = client
        .read_data_source(read_data_source::Request {
            type_name: "tether_greeting".into(),
            config: Some(json(r#"{"name":"tether","greeting":null}"#)),
            ..read_data_source::Request::default()
        })
        .await
        .expect("ReadDataSource")
        .into_inner();
    assert!(read.diagnostics.is_empty(), "{read:#?}");
    let state = read.state.expect("the data source's state").msgpack;
    assert!(
        contains(&state, b"tf: Hello, tether!") && contains(&state, b"greeting"),
        "{}",
        String::from_utf8_lossy(&state)
    );

    let stopped = client
        .stop_provider(stop_provider::Request {})
        .await
        .expect("StopProvider")
        .into_inner();
    assert_eq!(stopped.error, "", "{stopped:#?}");

    // The provider's hclog JSON arrives as events at the levels it logged them.
    let logged = eventually(PATIENCE, || {
        recorded("tf-tether").iter().any(|e| {
            e.target == "tether::plugin"
                && e.level == Level::TRACE
                && e.message == "Served request"
                && e.fields.contains("tf_rpc=GetProviderSchema")
        })
    })
    .await;
    assert!(logged, "{:#?}", recorded("tf-tether"));

    let pid = provider.pid();
    let exit = provider.shutdown().await.expect("shutdown");
    assert_eq!(exit.stop, Stop::Graceful, "{exit:?}");
    assert!(exit.status.success(), "{exit:?}");
    assert!(is_gone(pid));
    let complaints = host_complaints("tf-tether");
    assert!(complaints.is_empty(), "{complaints:#?}");
}

/// The plugin context of a request for the data source `name` with `json` settings.
fn datasource(id: i64, name: &str, json: &str) -> PluginContext {
    PluginContext {
        org_id: 1,
        plugin_id: "tether-test-datasource".into(),
        data_source_instance_settings: Some(DataSourceInstanceSettings {
            id,
            name: name.into(),
            uid: format!("uid-{id}"),
            json_data: json.as_bytes().to_vec(),
            last_updated_ms: 1_700_000_000_000,
            ..DataSourceInstanceSettings::default()
        }),
        plugin_version: "0.1.0".into(),
        user_agent: "tether-e2e".into(),
    }
}

#[tokio::test]
async fn a_tether_host_checks_the_health_of_a_grafana_backend_datasource() {
    record_events();
    let plugin = PluginClient::builder("grafana-tether", GRAFANA_DATASOURCE.path())
        .handshake(GRAFANA)
        .protocol_versions(&[GRAFANA_VERSION])
        // Grafana's own limit.
        .max_message_size(16 << 20)
        // go-plugin makes a temporary file where it binds its socket.
        .sandbox(sandbox().allow_socket_dir_files(true))
        .start()
        .await
        .expect("the Grafana plugin starts under the sandbox");
    assert_eq!(plugin.protocol_version(), GRAFANA_VERSION);
    let mut diagnostics = DiagnosticsClient::new(plugin.channel());

    let healthy = diagnostics
        .check_health(CheckHealthRequest {
            plugin_context: Some(datasource(1, "Tethered", r#"{"motto":"out of process"}"#)),
            ..CheckHealthRequest::default()
        })
        .await
        .expect("CheckHealth")
        .into_inner();
    assert_eq!(healthy.status(), HealthStatus::Ok, "{healthy:#?}");
    assert_eq!(healthy.message, "Tethered is healthy: out of process");

    let unhealthy = diagnostics
        .check_health(CheckHealthRequest {
            plugin_context: Some(datasource(2, "Mottoless", "{}")),
            ..CheckHealthRequest::default()
        })
        .await
        .expect("CheckHealth")
        .into_inner();
    assert_eq!(unhealthy.status(), HealthStatus::Error, "{unhealthy:#?}");
    assert_eq!(unhealthy.message, "Mottoless has no motto in its settings");

    // Without a data source (Grafana always sends a plugin context; the SDK dereferences
    // it), the SDK's instance manager answers for the plugin.
    let contextless = diagnostics
        .check_health(CheckHealthRequest {
            plugin_context: Some(PluginContext {
                data_source_instance_settings: None,
                ..datasource(3, "", "")
            }),
            ..CheckHealthRequest::default()
        })
        .await
        .expect("CheckHealth")
        .into_inner();
    assert_eq!(
        contextless.status(),
        HealthStatus::Error,
        "{contextless:#?}"
    );
    assert!(
        contextless.message.contains("settings cannot be nil"),
        "{contextless:#?}"
    );

    let metrics = diagnostics
        .collect_metrics(CollectMetricsRequest {
            plugin_context: Some(datasource(1, "Tethered", r#"{"motto":"out of process"}"#)),
        })
        .await
        .expect("CollectMetrics")
        .into_inner();
    let text = String::from_utf8_lossy(
        &metrics
            .metrics
            .as_ref()
            .expect("a metrics payload")
            .prometheus,
    )
    .into_owned();
    assert!(text.contains("go_goroutines"), "{text}");

    // The SDK's hclog JSON arrives as events at the levels it logged them.
    let logged = eventually(PATIENCE, || {
        let events = recorded("grafana-tether");
        [
            (Level::INFO, "health check"),
            (Level::WARN, "health check without a motto"),
        ]
        .iter()
        .all(|(level, message)| {
            events
                .iter()
                .any(|e| e.target == "tether::plugin" && e.level == *level && e.message == *message)
        })
    })
    .await;
    assert!(logged, "{:#?}", recorded("grafana-tether"));

    let pid = plugin.pid();
    let exit = plugin.shutdown().await.expect("shutdown");
    assert_eq!(exit.stop, Stop::Graceful, "{exit:?}");
    assert!(exit.status.success(), "{exit:?}");
    assert!(is_gone(pid));
    let complaints = host_complaints("grafana-tether");
    assert!(complaints.is_empty(), "{complaints:#?}");
}
