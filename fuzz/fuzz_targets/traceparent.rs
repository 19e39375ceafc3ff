//! The W3C `traceparent` a call carries (`TraceContext::from_str`, read from an incoming
//! request by `CallContext::of` and passed on by `CallContext::child`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_protocol::{CallContext, TRACEPARENT_METADATA, TraceContext};
use tonic::Request;
use tonic::metadata::MetadataValue;

/// The grammar, written out independently of the parser: `00-<32>-<16>-<2>` lowercase
/// hex, ids not all zeros.
fn well_formed(text: &str) -> bool {
    let fields: Vec<&str> = text.split('-').collect();
    let hex = |field: &str, len: usize| {
        field.len() == len
            && field
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    fields.len() == 4
        && fields[0] == "00"
        && hex(fields[1], 32)
        && hex(fields[2], 16)
        && hex(fields[3], 2)
        && fields[1].bytes().any(|b| b != b'0')
        && fields[2].bytes().any(|b| b != b'0')
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = text.parse::<TraceContext>();
    assert_eq!(parsed.is_ok(), well_formed(text), "{text:?}: {parsed:?}");
    if let Ok(trace) = &parsed {
        // It prints back as the same header, and its ids are what the header says.
        assert_eq!(trace.to_string(), text);
        assert_eq!(trace.trace_id(), text[3..35]);
        assert_eq!(trace.span_id(), text[36..52]);
        let child = trace.child().expect("random bytes");
        assert_eq!(child.trace_id(), trace.trace_id());
        assert_eq!(child.flags(), trace.flags());
    }

    // The same text as the header of an incoming request: read exactly when well formed.
    let Ok(value) = MetadataValue::try_from(text) else {
        return;
    };
    let mut request = Request::new(());
    request.metadata_mut().insert(TRACEPARENT_METADATA, value);
    let context = CallContext::of(&request);
    assert_eq!(context.trace().copied(), parsed.ok());
    if let Ok(onward) = context.child().and_then(|child| {
        child
            .request(())
            .map_err(|status| panic!("{text:?}: {status}"))
    }) {
        let passed = CallContext::of(&onward);
        assert_eq!(passed.trace_id(), context.trace_id());
    }
});
