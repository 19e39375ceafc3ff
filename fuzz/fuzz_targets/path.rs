//! The lexical check on every path a plugin sends (`RequestPath::parse`), and how the
//! audit log shows a raw path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_hostserve::fuzzing::{display_path, parse_path};
use tether_hostserve::{MAX_COMPONENT, MAX_PATH, PathError, RESERVED_PREFIX};

/// The rules of `RequestPath::parse`, written out again as the reference.
fn expected(raw: &[u8]) -> Result<(), PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > MAX_PATH {
        return Err(PathError::TooLong(raw.len()));
    }
    let text = std::str::from_utf8(raw).map_err(|_| PathError::NotUtf8)?;
    if raw.contains(&0) {
        return Err(PathError::Nul);
    }
    if raw[0] == b'/' {
        return Err(PathError::Absolute);
    }
    for component in text.split('/') {
        if component.is_empty() {
            return Err(PathError::EmptyComponent);
        }
        if component == "." || component == ".." {
            return Err(PathError::Dot);
        }
        if component.len() > MAX_COMPONENT {
            return Err(PathError::ComponentTooLong(component.len()));
        }
        if component.starts_with(RESERVED_PREFIX) {
            return Err(PathError::Reserved(component.to_owned()));
        }
    }
    Ok(())
}

fuzz_target!(|raw: &[u8]| {
    let parsed = parse_path(raw);
    assert_eq!(
        parsed.as_ref().map(|_| ()).map_err(Clone::clone),
        expected(raw),
        "{raw:?}"
    );
    if let Ok(text) = parsed {
        // Nothing is decoded, trimmed or normalised.
        assert_eq!(text.as_bytes(), raw);
    }
    let shown = display_path(raw);
    // At most 512 bytes are shown, each escaped to at most 10 characters, plus the length.
    assert!(shown.len() <= 512 * 10 + 32, "{}", shown.len());
});
