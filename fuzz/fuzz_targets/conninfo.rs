//! The connection infos the other side sends on the broker stream: protobuf `ConnInfo`
//! messages, kept or handed to waiting dials (`Broker::receive`), then checked before
//! dialing (network and address, confined to the socket directory or not).
//!
//! Input: length-delimited `ConnInfo` messages, as protobuf encodes them.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tether_broker::fuzzing::{MAX_UNCLAIMED, Offers};
use tether_protocol::plugin::ConnInfo;

const SOCKET_DIR: &str = "/tmp/tether-x-abc";

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    let mut infos = Vec::new();
    while !buf.is_empty() {
        match ConnInfo::decode_length_delimited(&mut buf) {
            Ok(info) => infos.push(info),
            Err(_) => break,
        }
    }
    let dir = Path::new(SOCKET_DIR);
    let confined = Offers::new(dir, true);
    let open = Offers::new(dir, false);

    for (i, info) in infos.iter().enumerate() {
        // Every other info finds a dial already waiting; every third of those gave up.
        let mut waiter = (i % 2 == 1).then(|| confined.wait_for(info.service_id));
        if i % 6 == 5 {
            waiter = None;
        }
        let before = confined.unclaimed();
        confined.receive(info.clone());
        assert!(confined.unclaimed() <= MAX_UNCLAIMED);
        if info.knock.is_some() {
            // Knocks are multiplexing, never offers: neither kept nor handed out.
            assert_eq!(confined.unclaimed(), before);
        }
        if let Some(mut waiter) = waiter {
            match waiter.take() {
                Some(handed) => assert_eq!(&handed, info),
                None => assert!(info.knock.is_some(), "a waiting dial missed {info:?}"),
            }
        }
        check(&confined, &open, info.clone());
    }
    for info in &infos {
        if let Some(kept) = confined.take_arrived(info.service_id) {
            assert_eq!(kept.service_id, info.service_id);
            assert!(kept.knock.is_none());
            check(&confined, &open, kept);
        }
    }
    assert_eq!(confined.unclaimed(), 0);
});

/// The check before dialing: only `unix`, and with confinement only a socket directly in
/// the socket directory, spelled canonically.
fn check(confined: &Offers, open: &Offers, info: ConnInfo) {
    let id = info.service_id;
    let unix = info.network == "unix";
    match open.check(id, info.clone()) {
        Ok(path) => {
            assert!(unix);
            assert_eq!(path.as_os_str(), info.address.as_str());
        }
        Err(err) => {
            assert!(!unix, "{err}");
        }
    }
    match confined.check(id, info.clone()) {
        Ok(path) => {
            assert!(unix);
            assert_eq!(path.as_os_str(), info.address.as_str());
            assert_eq!(path.parent(), Some(Path::new(SOCKET_DIR)));
            let name = path.file_name().expect("a socket name");
            assert!(name != "." && name != ".." && !name.is_empty());
            assert!(!info.address.contains("//") && !info.address.contains("/./"));
        }
        Err(err) => assert!(err.to_string().contains(&id.to_string()), "{err}"),
    }
}
