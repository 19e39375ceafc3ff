//! `plugin.toml` manifests (`Manifest::parse`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tether_hostserve::{Capability, Manifest, ManifestError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::parse(text, Path::new("plugin.toml")) {
        Ok(manifest) => {
            assert!(!manifest.name.trim().is_empty());
            for capability in &manifest.capabilities {
                let again: Capability = capability.as_str().parse().expect("reparses");
                assert_eq!(&again, capability);
            }
        }
        Err(err) => {
            assert!(err.to_string().contains("plugin.toml"), "{err}");
            match err {
                ManifestError::Capabilities { errors, .. } => assert!(!errors.is_empty()),
                ManifestError::Parse { .. } | ManifestError::EmptyName { .. } => {}
                ManifestError::Read { .. } => panic!("parsing text never reads a file"),
            }
        }
    }
});
