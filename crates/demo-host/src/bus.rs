//! The demo host's own host service: a message bus between plugins (`tether.bus.v1.Bus`),
//! behind tether's gate like the file services. Each method says what it needs in one
//! statement (`gate.check(..)`); the gate identifies the caller, decides with the policy,
//! and writes the call's audit record.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use futures_util::Stream;
use tether_hostserve::{CapabilityKind, Gate, Need, Resource};
use tether_protocol::bus::bus_server::{Bus as BusRpc, BusServer};
use tether_protocol::bus::{Message, PublishRequest, PublishResponse, SubscribeRequest};
use tokio::sync::broadcast::{self, error::RecvError};
use tonic::{Request, Response, Status};

/// Messages a subscriber may fall behind by before it starts missing them.
pub(crate) const SUBSCRIBER_QUEUE: usize = 64;

/// The largest payload the bus carries.
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024;

/// The name of the bus's capability kind.
pub(crate) const KIND: &str = "bus";

/// The bus's capability kind: `bus:publish:TOPIC`, `bus:subscribe:TOPIC`.
pub(crate) fn kind() -> CapabilityKind {
    CapabilityKind::new(KIND)
        .actions(["publish", "subscribe"])
        .resource(Resource::PATH)
}

/// The bus: one broadcast channel per topic, shared by every plugin.
#[derive(Debug)]
pub(crate) struct Bus {
    gate: Gate,
    topics: Mutex<HashMap<String, broadcast::Sender<Message>>>,
}

impl Bus {
    pub(crate) fn new(gate: Gate) -> Self {
        Bus {
            gate,
            topics: Mutex::default(),
        }
    }

    /// The messages published on `topic` from now on, for the host itself.
    pub(crate) fn listen(&self, topic: &str) -> broadcast::Receiver<Message> {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget the topics nobody listens to any more.
        topics.retain(|_, sender| sender.receiver_count() > 0);
        topics
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(SUBSCRIBER_QUEUE).0)
            .subscribe()
    }

    /// Hands `message` to every subscriber of its topic; returns how many.
    fn deliver(&self, message: Message) -> usize {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics
            .get(&message.topic)
            .and_then(|sender| sender.send(message).ok())
            .unwrap_or(0)
    }
}

type Messages = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send>>;

#[tonic::async_trait]
impl BusRpc for Bus {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let topic = request.get_ref().topic.clone();
        let mut call = self
            .gate
            .check(&request, Need::new(KIND).action("publish").resource(&topic))
            .await?;
        let payload = request.into_inner().payload;
        if payload.len() > MAX_PAYLOAD {
            let status = Status::invalid_argument(format!(
                "the payload is {} bytes; the bus carries at most {MAX_PAYLOAD}",
                payload.len()
            ));
            return Err(call.deny(status, "payload too large"));
        }
        let delivered = self.deliver(Message {
            topic,
            payload,
            publisher: call.identity().name().to_owned(),
            missed: 0,
        });
        call.finish(Ok(Response::new(PublishResponse {
            delivered: u32::try_from(delivered).unwrap_or(u32::MAX),
        })))
    }

    type SubscribeStream = Messages;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Messages>, Status> {
        let topic = request.get_ref().topic.clone();
        let mut call = self
            .gate
            .check(
                &request,
                Need::new(KIND).action("subscribe").resource(&topic),
            )
            .await?;
        let receiver = self.listen(&topic);
        // The subscription holds one of the plugin's concurrency slots while it is open.
        let slot = call.take_slot();
        call.finish(Ok(()))?;
        let messages = futures_util::stream::unfold(
            (receiver, slot, 0u64),
            |(mut receiver, slot, mut missed)| async move {
                loop {
                    match receiver.recv().await {
                        Ok(mut message) => {
                            message.missed = missed;
                            return Some((Ok(message), (receiver, slot, 0)));
                        }
                        // This subscriber read too slowly: it misses messages, nobody waits.
                        Err(RecvError::Lagged(skipped)) => missed += skipped,
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(messages)))
    }
}

/// The bus as a tonic service, ready for `HostServices::serve`.
pub(crate) fn server(bus: std::sync::Arc<Bus>) -> BusServer<Bus> {
    BusServer::from_arc(bus)
}
