//! The demo host's own host service: a message bus between plugins (`tether.bus.v1.Bus`),
//! behind tether's gate like the file services. Each method says what it needs in one
//! statement (`gate.check(..)`); the gate identifies the caller, decides with the policy,
//! and writes the call's audit record.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};

use futures_util::Stream;
use tether_demo_contract::bus::bus_server::{Bus as BusRpc, BusServer};
use tether_demo_contract::bus::{Message, PublishRequest, PublishResponse, SubscribeRequest};
use tether_hostserve::{CapabilityKind, Gate, Need, Resource};
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::StreamExt;
    use tether_demo_contract::bus::bus_client::BusClient;
    use tether_hostconn::InProcess;
    use tether_hostserve::{Audit, CAPABILITY_METADATA, HostServices, Limits, Policy};
    use tokio::sync::broadcast::error::TryRecvError;
    use tonic::Code;
    use tonic::transport::Channel;

    use super::*;

    /// The bus behind a gate granting `grants` (plugin, capability), auditing to a
    /// temporary file.
    struct Fixture {
        _dir: tempfile::TempDir,
        bus: Arc<Bus>,
        services: HostServices,
    }

    fn fixture(grants: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy::with_kinds([kind()]).unwrap();
        for (plugin, capability) in grants {
            policy.grant(plugin, capability).unwrap();
        }
        let audit = Audit::to_file(dir.path().join("audit.jsonl"), 16 << 20).unwrap();
        let gate = Gate::new(policy, audit, Limits::default());
        let bus = Arc::new(Bus::new(gate.clone()));
        let services = HostServices::from_gate(gate).serve(server(Arc::clone(&bus)));
        Fixture {
            _dir: dir,
            bus,
            services,
        }
    }

    impl Fixture {
        /// A bus client as the plugin `name` (keep the connection while using it).
        async fn plugin(&self, name: &str) -> (InProcess, BusClient<Channel>) {
            let local = tether_hostconn::in_process(name, self.services.routes())
                .await
                .unwrap();
            let client = BusClient::new(local.channel());
            (local, client)
        }
    }

    fn publish(topic: &str, payload: &[u8]) -> PublishRequest {
        PublishRequest {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
        }
    }

    fn subscribe(topic: &str) -> SubscribeRequest {
        SubscribeRequest {
            topic: topic.to_owned(),
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_the_message_with_the_publisher_the_host_knows() {
        let bus = fixture(&[
            ("alpha", "bus:publish:news/**"),
            ("beta", "bus:subscribe:news/*"),
        ]);
        let (_alpha, mut alpha) = bus.plugin("alpha").await;
        let (_beta, mut beta) = bus.plugin("beta").await;
        let mut host = bus.bus.listen("news/today");
        let mut stream = beta
            .subscribe(subscribe("news/today"))
            .await
            .unwrap()
            .into_inner();

        let reply = alpha
            .publish(publish("news/today", b"hello"))
            .await
            .unwrap();
        assert_eq!(reply.into_inner().delivered, 2);
        let got = stream.next().await.unwrap().unwrap();
        assert_eq!(
            (
                got.topic.as_str(),
                got.payload.as_slice(),
                got.publisher.as_str(),
                got.missed
            ),
            ("news/today", b"hello".as_slice(), "alpha", 0)
        );
        assert_eq!(host.recv().await.unwrap(), got);

        // Another topic reaches neither.
        let reply = alpha.publish(publish("news/other", b"x")).await.unwrap();
        assert_eq!(reply.into_inner().delivered, 0);
        assert!(matches!(host.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test]
    async fn publishing_and_subscribing_each_need_their_capability() {
        let bus = fixture(&[("alpha", "bus:subscribe:news")]);
        let (_alpha, mut alpha) = bus.plugin("alpha").await;
        let mut host = bus.bus.listen("news");

        let denied = alpha.publish(publish("news", b"x")).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert_eq!(
            denied.metadata().get(CAPABILITY_METADATA).unwrap(),
            "bus:publish:news"
        );
        assert!(matches!(host.try_recv(), Err(TryRecvError::Empty)));

        let denied = alpha.subscribe(subscribe("sports")).await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert_eq!(
            denied.metadata().get(CAPABILITY_METADATA).unwrap(),
            "bus:subscribe:sports"
        );
        alpha.subscribe(subscribe("news")).await.unwrap();
    }

    #[tokio::test]
    async fn a_payload_over_the_cap_is_refused() {
        let bus = fixture(&[("alpha", "bus:publish:news")]);
        let (_alpha, mut alpha) = bus.plugin("alpha").await;
        let mut host = bus.bus.listen("news");
        let refused = alpha
            .publish(publish("news", &vec![0; MAX_PAYLOAD + 1]))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(matches!(host.try_recv(), Err(TryRecvError::Empty)));
        alpha
            .publish(publish("news", &vec![0; MAX_PAYLOAD]))
            .await
            .unwrap();
        assert_eq!(host.recv().await.unwrap().payload.len(), MAX_PAYLOAD);
    }

    #[tokio::test]
    async fn a_slow_subscriber_misses_messages_and_holds_up_nobody() {
        // Far more than a subscriber's queue plus what the connection buffers.
        const TOTAL: u64 = 300;
        let bus = fixture(&[
            ("alpha", "bus:publish:load"),
            ("beta", "bus:subscribe:load"),
        ]);
        let (_alpha, mut alpha) = bus.plugin("alpha").await;
        let (_beta, mut beta) = bus.plugin("beta").await;
        // beta subscribes, then reads nothing until the end.
        let mut slow = beta
            .subscribe(subscribe("load"))
            .await
            .unwrap()
            .into_inner();
        // The host reads each message as it comes.
        let mut fast = bus.bus.listen("load");
        let reader = tokio::spawn(async move {
            let mut read = 0;
            while read < TOTAL {
                let message = fast.recv().await.expect("the fast subscriber fell behind");
                assert_eq!(message.missed, 0);
                read += 1;
            }
            read
        });

        let payload = vec![b'x'; 32 * 1024];
        tokio::time::timeout(Duration::from_secs(60), async {
            for _ in 0..TOTAL {
                let reply = alpha.publish(publish("load", &payload)).await.unwrap();
                assert_eq!(reply.into_inner().delivered, 2);
            }
        })
        .await
        .expect("the slow subscriber held up the publisher");
        assert_eq!(reader.await.unwrap(), TOTAL);

        // Reading at last, beta is told how many it missed: nothing is lost silently.
        let (mut received, mut missed) = (0, 0);
        while received + missed < TOTAL {
            let message = slow.next().await.unwrap().unwrap();
            received += 1;
            missed += message.missed;
        }
        assert!(missed > 0, "the slow subscriber missed nothing");
        assert_eq!(received + missed, TOTAL);
    }
}
