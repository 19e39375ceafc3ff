//! The handshake line a plugin prints on stdout (`Handshake::from_str`), and the
//! `PLUGIN_PROTOCOL_VERSIONS` list (`parse_versions`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_protocol::{Handshake, HandshakeParseError, format_versions, parse_versions};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let fields = line.trim().split('|').count();
    match line.parse::<Handshake>() {
        Ok(handshake) => {
            assert!((4..=7).contains(&fields));
            assert!(!handshake.address.is_empty());
            // What a host accepted, formatted again, is the same handshake.
            let again = handshake.to_string();
            assert_eq!(
                again.parse::<Handshake>().as_ref(),
                Ok(&handshake),
                "{line:?} formats as {again:?}"
            );
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
            match err {
                HandshakeParseError::TooFewFields { found } => {
                    assert_eq!(found, fields);
                    assert!(found < 4);
                }
                HandshakeParseError::TooManyFields { found } => {
                    assert_eq!(found, fields);
                    assert!(found > 7);
                }
                HandshakeParseError::InvalidField { position, .. } => {
                    assert!((4..=7).contains(&fields) && (1..=fields).contains(&position));
                }
            }
        }
    }
    let versions = parse_versions(line);
    assert_eq!(parse_versions(&format_versions(&versions)), versions);
});
