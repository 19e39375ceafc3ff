//! A plugin that keeps state in files: the subject of the data-directory tests. It serves
//! `tether.testing.v1.Testing`; each file operation is a `HostOp` whose `op` names it,
//! `path` is its path (relative ones are taken from the working directory, which the host
//! makes the data directory) and `data` its second argument:
//!
//! - `write <path> <data>`: create or replace the file, then `fsync` it;
//! - `append <path> <data>`: append to the file (creating it);
//! - `truncate <path>`: cut the file to `size` bytes;
//! - `read <path>`: the file's contents in `data`;
//! - `rename <path> <new path>`; `remove <path>`; `mkdir <path>`; `rmdir <path>`;
//! - `list <path>`: the entries' names, sorted, in `names`;
//! - `where`: the working directory in `message`, `TETHER_DATA_DIR` in `data` (empty when
//!   unset).
//!
//! The response's `outcome` is `ok`, or `errno <n>` with the error in `message`.

use std::io::Write;
use std::process::ExitCode;

use tether_plugin_sdk::tonic::{self, Request, Response, Status};
use tether_plugin_sdk::{HandshakeConfig, Plugin, Routes};
use tether_test_contract::testing::testing_server::{Testing, TestingServer};
use tether_test_contract::testing::*;

const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("TETHER_TEST_PLUGIN", "e2e");

struct State;

fn attempt(request: HostOpRequest) -> std::io::Result<HostOpResponse> {
    let HostOpRequest {
        op,
        path,
        data,
        size,
    } = request;
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&path).into_owned());
    let mut response = HostOpResponse {
        outcome: "ok".into(),
        ..HostOpResponse::default()
    };
    match op.as_str() {
        "write" => {
            let mut file = std::fs::File::create(&path)?;
            file.write_all(&data)?;
            file.sync_all()?;
        }
        "append" => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(&data)?;
        }
        "truncate" => std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(size)?,
        "read" => response.data = std::fs::read(&path)?,
        "rename" => std::fs::rename(&path, String::from_utf8_lossy(&data).as_ref())?,
        "remove" => std::fs::remove_file(&path)?,
        "mkdir" => std::fs::create_dir(&path)?,
        "rmdir" => std::fs::remove_dir(&path)?,
        "list" => {
            let mut names = std::fs::read_dir(&path)?
                .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<Vec<_>>>()?;
            names.sort();
            response.names = names;
        }
        "where" => {
            response.message = std::env::current_dir()?.display().to_string();
            response.data = std::env::var_os("TETHER_DATA_DIR")
                .map(|dir| dir.into_encoded_bytes())
                .unwrap_or_default();
        }
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown op {other:?}"),
            ));
        }
    }
    Ok(response)
}

#[tonic::async_trait]
impl Testing for State {
    type TicksStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Tick, Status>> + Send>>;

    async fn ticks(&self, _: Request<TickRequest>) -> Result<Response<Self::TicksStream>, Status> {
        Err(Status::unimplemented("state"))
    }

    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            message: request.into_inner().message,
            protocol_version: 1,
        }))
    }

    async fn print(&self, _: Request<PrintRequest>) -> Result<Response<PrintResponse>, Status> {
        Err(Status::unimplemented("state"))
    }

    async fn log(&self, _: Request<LogRequest>) -> Result<Response<LogResponse>, Status> {
        Err(Status::unimplemented("state"))
    }

    async fn spawn_child(
        &self,
        _: Request<SpawnChildRequest>,
    ) -> Result<Response<SpawnChildResponse>, Status> {
        Err(Status::unimplemented("state"))
    }

    async fn call_host(
        &self,
        _: Request<CallHostRequest>,
    ) -> Result<Response<CallHostResponse>, Status> {
        Err(Status::unimplemented("state"))
    }

    async fn serve_brokered(
        &self,
        _: Request<ServeBrokeredRequest>,
    ) -> Result<Response<ServeBrokeredResponse>, Status> {
        Err(Status::unimplemented("state"))
    }

    async fn host_op(
        &self,
        request: Request<HostOpRequest>,
    ) -> Result<Response<HostOpResponse>, Status> {
        let request = request.into_inner();
        let response = tokio::task::spawn_blocking(move || {
            attempt(request).unwrap_or_else(|err| HostOpResponse {
                outcome: format!("errno {}", err.raw_os_error().unwrap_or(0)),
                message: err.to_string(),
                ..HostOpResponse::default()
            })
        })
        .await
        .map_err(|err| Status::internal(err.to_string()))?;
        Ok(Response::new(response))
    }
}

fn main() -> ExitCode {
    Plugin::new(HANDSHAKE)
        .version(1, Routes::new(TestingServer::new(State)))
        .run()
}
