//! tether's KV plugin for the interop tests: go-plugin's example interface `proto.KV`,
//! served with the SDK, for a Go host built with go-plugin to drive.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};

use tether_plugin_sdk::tonic::{self, Request, Response, Status};
use tether_plugin_sdk::{HandshakeConfig, Plugin, Routes};
use tether_test_contract::interop::kv_server::{Kv, KvServer};
use tether_test_contract::interop::{Empty, GetRequest, GetResponse, PutRequest};

/// go-plugin's example handshake.
const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("BASIC_PLUGIN", "hello");

#[derive(Default)]
struct Store {
    values: Mutex<HashMap<String, Vec<u8>>>,
}

#[tonic::async_trait]
impl Kv for Store {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let key = request.into_inner().key;
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        match values.get(&key) {
            Some(value) => {
                tracing::debug!(key, "read a value");
                Ok(Response::new(GetResponse {
                    value: value.clone(),
                }))
            }
            None => {
                tracing::warn!(key, "get of a missing key");
                Err(Status::not_found(format!("no such key: {key:?}")))
            }
        }
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<Empty>, Status> {
        let PutRequest { key, value } = request.into_inner();
        if key.is_empty() {
            return Err(Status::invalid_argument("the key is empty"));
        }
        tracing::info!(key, bytes = value.len(), "stored a value");
        // A stray print, as plugins have: it reaches the host over the stdio stream
        // (go-plugin's GRPCStdio), which a Go host (1.1 and later) mirrors.
        #[allow(
            clippy::print_stdout,
            reason = "the stdio stream is what this exercises"
        )]
        {
            println!("kv-plugin stored {key}");
        }
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value);
        Ok(Response::new(Empty {}))
    }
}

fn main() -> ExitCode {
    Plugin::new(HANDSHAKE)
        .version(1, Routes::new(KvServer::new(Store::default())))
        .run()
}
