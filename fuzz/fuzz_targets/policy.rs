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
            // Every plugin the file names has exactly the grants it lists, as written.
            let table: toml::Table = text.parse().expect("a loaded policy is TOML");
            let plugins = table.get("plugins").and_then(toml::Value::as_table);
            for (name, entry) in plugins.into_iter().flatten() {
                let written: Vec<String> = entry
                    .get("grant")
                    .and_then(toml::Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|grant| grant.as_str().expect("grants are strings").to_owned())
                    .collect();
                assert_eq!(policy.grants(name), written, "{name}");
                assert!(parse_capabilities(&written).is_ok());
            }
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
            match err {
                PolicyError::Capabilities { errors, .. } => assert!(!errors.is_empty()),
                PolicyError::Parse { .. } => {}
                PolicyError::Read { .. } | PolicyError::NoWorkspace { .. } => {
                    panic!("parsing text neither reads a file nor grants: {err}")
                }
            }
        }
    }
});
