//! The call context's metadata: the `tether-request-id` value (`valid_request_id`) and the
//! `grpc-timeout` header (`parse_grpc_timeout`), read from an incoming request
//! (`CallContext::of`) and passed on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_protocol::{
    CallContext, REQUEST_ID_METADATA, format_grpc_timeout, parse_grpc_timeout, valid_request_id,
};
use tonic::Request;
use tonic::metadata::MetadataValue;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Some(timeout) = parse_grpc_timeout(text) {
        let (digits, unit) = text.split_at(text.len() - 1);
        assert!((1..=8).contains(&digits.len()));
        assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        assert!(["H", "M", "S", "m", "u", "n"].contains(&unit));
        // Formatting loses nothing a header could say.
        assert_eq!(
            parse_grpc_timeout(&format_grpc_timeout(timeout)),
            Some(timeout)
        );
    }

    let valid = (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    assert_eq!(valid_request_id(text), valid, "{text:?}");
    match CallContext::new().with_request_id(text) {
        Ok(context) => {
            assert!(valid);
            let request = context.request(()).expect("no deadline");
            assert_eq!(CallContext::of(&request).request_id(), Some(text));
        }
        Err(status) => {
            assert!(!valid);
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
        }
    }

    // The same text as both headers of an incoming request.
    let Ok(value) = MetadataValue::try_from(text) else {
        return;
    };
    let mut request = Request::new(());
    request
        .metadata_mut()
        .insert(REQUEST_ID_METADATA, value.clone());
    request.metadata_mut().insert("grpc-timeout", value);
    let context = CallContext::of(&request);
    assert_eq!(context.request_id(), valid.then_some(text));
    match (context.remaining(), parse_grpc_timeout(text)) {
        (Some(left), Some(timeout)) => assert!(left <= timeout),
        (None, None) => {}
        (left, timeout) => panic!("{text:?}: deadline {left:?} for timeout {timeout:?}"),
    }
    // Passed on: the id unchanged, the time left no more than the caller gave.
    if let Ok(onward) = context.request(()) {
        let passed = CallContext::of(&onward);
        assert_eq!(passed.request_id(), context.request_id());
        if let (Some(after), Some(timeout)) = (passed.remaining(), parse_grpc_timeout(text)) {
            assert!(after <= timeout, "{text:?}: {after:?} left of {timeout:?}");
        }
    }
});
