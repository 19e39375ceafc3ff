//! The operator's policy file (`Policy::from_toml`, which parses every grant with
//! `parse_all`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tether_hostserve::fuzzing::parse_capabilities;
use tether_hostserve::{Policy, PolicyError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_toml(text, Path::new("/fuzz")) {
        Ok(policy) => {
            // Every plugin the file names has exactly the grants it lists, as written (those
            // with an expiry may have expired already, and are left out).
            let table: toml::Table = text.parse().expect("a loaded policy is TOML");
            let plugins = table.get("plugins").and_then(toml::Value::as_table);
            for (name, entry) in plugins.into_iter().flatten() {
                let written: Vec<String> = entry
                    .get("grant")
                    .and_then(toml::Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|grant| match grant {
                        toml::Value::String(text) => Some(text.clone()),
                        toml::Value::Table(table) => table
                            .get("capability")
                            .and_then(toml::Value::as_str)
                            .filter(|_| {
                                !table.contains_key("expires_in")
                                    && !table.contains_key("expires_at")
                            })
                            .map(str::to_owned),
                        other => panic!("a loaded grant is a string or a table: {other:?}"),
                    })
                    .collect();
                let live: Vec<String> = policy
                    .grants(name)
                    .into_iter()
                    .filter(|grant| written.contains(grant))
                    .collect();
                assert_eq!(live, written, "{name}");
                assert!(parse_capabilities(&written).is_ok());
            }
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
            match err {
                PolicyError::Capabilities { errors, .. } => assert!(!errors.is_empty()),
                PolicyError::Parse { .. } => {}
                PolicyError::Read { .. } | PolicyError::Kind(_) => {
                    panic!("parsing text neither reads a file nor declares kinds: {err}")
                }
            }
        }
    }
});
