//! The greeter host: grants the plugin `read:greeting.txt` in a fresh workspace, starts it
//! sandboxed, gives it the file service, asks it to greet, and shows the audit trail.
//!
//! `greeter-host [NAME] [--plugin FILE]`; the plugin defaults to `greeter-plugin` beside
//! this executable (`cargo build -p tether-example-greeter` builds both).

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use tether::host::{KernelSupport, PluginClient, Sandbox};
use tether::hostserve::{Audit, HostServices, Limits, Policy};
use tether::protocol::CallContext;
use tether::tokio::runtime::Builder;
use tether::tonic::Request;
use tether_example_greeter::proto::GreetRequest;
use tether_example_greeter::proto::greeter_client::GreeterClient;
use tether_example_greeter::{GRANT, GREETING_FILE, HANDSHAKE, PLUGIN, VERSION};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> ExitCode {
    let mut name = "world".to_owned();
    let mut plugin = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--plugin" => plugin = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("usage: greeter-host [NAME] [--plugin FILE]");
                return ExitCode::SUCCESS;
            }
            _ => name = arg,
        }
    }
    let runtime = Builder::new_current_thread().enable_all().build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(&name, plugin)),
        Err(err) => Err(format!("could not start the async runtime: {err}").into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(name: &str, program: Option<PathBuf>) -> Result<()> {
    let program = match program {
        Some(program) => program,
        None => std::env::current_exe()?.with_file_name("greeter-plugin"),
    };
    if !program.is_file() {
        return Err(format!(
            "the plugin {} is not a file: build it with `cargo build -p tether-example-greeter`, \
             or pass --plugin FILE",
            program.display()
        )
        .into());
    }
    // A fresh workspace with the greeting in it, removed at the end.
    let dir = std::env::temp_dir().join(format!("tether-greeter-{}", std::process::id()));
    let workspace = dir.join("workspace");
    std::fs::create_dir_all(&workspace)?;
    let result = greet(name, &program, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn greet(name: &str, program: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    let workspace = dir.join("workspace");
    std::fs::write(workspace.join(GREETING_FILE), "Hello\n")?;

    // The operator's decision: this plugin may read one file of its workspace.
    let policy = Policy::new();
    policy.set_workspace(PLUGIN, &workspace);
    policy.grant(PLUGIN, GRANT)?;
    let audit_path = dir.join("audit.jsonl");
    let audit = Audit::to_file(&audit_path, 1 << 20)?;
    let services = HostServices::new(policy, audit, Limits::default());

    // Every layer of the sandbox where this kernel has them all.
    let sandbox = if KernelSupport::probe().is_complete() {
        Sandbox::strict()
    } else {
        Sandbox::best_effort()
    };
    let plugin = PluginClient::builder(PLUGIN, program)
        .handshake(HANDSHAKE)
        .protocol_versions(&[VERSION])
        .sandbox(sandbox)
        .start()
        .await?;
    // The file service, for this plugin alone, in one line.
    let connection = services.connect(&plugin).await?.required()?;

    let mut greeter = GreeterClient::new(plugin.channel());
    let mut request = Request::new(GreetRequest {
        name: name.to_owned(),
    });
    // A request id the plugin passes on to its host-service call, and the audit records.
    CallContext::new()
        .with_request_id("greet-1")?
        .apply(&mut request)?;
    let reply = greeter.greet(request).await;

    connection.close().await;
    plugin.shutdown().await?;
    let greeting = reply?.into_inner().greeting;
    println!("{greeting}");
    println!("audit trail:");
    print!("{}", std::fs::read_to_string(&audit_path)?);
    Ok(())
}
