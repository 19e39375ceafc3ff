//! tether's counter plugin for the interop tests: go-plugin's example interface
//! `proto.Counter`, served with the SDK; each `Put` dials, through the broker, the
//! `proto.AddHelper` its host serves and lets the host do the sum.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};

use tether_plugin_sdk::tonic::{self, Request, Response, Status};
use tether_plugin_sdk::{Broker, HandshakeConfig, Plugin, Routes};
use tether_test_contract::interop::add_helper_client::AddHelperClient;
use tether_test_contract::interop::counter_server::{Counter, CounterServer};
use tether_test_contract::interop::{
    CounterEmpty, CounterGetRequest, CounterGetResponse, CounterPutRequest, SumRequest,
};

/// go-plugin's example handshake.
const HANDSHAKE: HandshakeConfig = HandshakeConfig::new("BASIC_PLUGIN", "hello");

struct Sums {
    broker: Broker,
    values: Mutex<HashMap<String, i64>>,
}

#[tonic::async_trait]
impl Counter for Sums {
    async fn get(
        &self,
        request: Request<CounterGetRequest>,
    ) -> Result<Response<CounterGetResponse>, Status> {
        let key = request.into_inner().key;
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(Response::new(CounterGetResponse {
            value: values.get(&key).copied().unwrap_or(0),
        }))
    }

    async fn put(
        &self,
        request: Request<CounterPutRequest>,
    ) -> Result<Response<CounterEmpty>, Status> {
        let CounterPutRequest {
            add_server,
            key,
            value,
        } = request.into_inner();
        // The host serves its AddHelper under a fresh broker id for each Put.
        let channel = self.broker.dial(add_server).await.map_err(|err| {
            Status::unavailable(format!("could not dial the host's AddHelper: {err}"))
        })?;
        let current = self
            .values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied()
            .unwrap_or(0);
        let sum = AddHelperClient::new(channel)
            .sum(SumRequest {
                a: current,
                b: value,
            })
            .await?
            .into_inner()
            .r;
        tracing::info!(key, sum, "added through the host");
        self.values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, sum);
        Ok(Response::new(CounterEmpty {}))
    }
}

fn main() -> ExitCode {
    let plugin = Plugin::new(HANDSHAKE);
    let sums = Sums {
        broker: plugin.broker(),
        values: Mutex::default(),
    };
    plugin
        .version(1, Routes::new(CounterServer::new(sums)))
        .run()
}
