//! A plugin's manifest (`plugin.toml` beside its binary): what it is and what it asks for.
//! Requests are not grants: the operator's [`crate::Policy`] decides.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::capability::{Capability, CapabilityError};
use crate::policy::parse_all;

/// A parsed and validated `plugin.toml`:
///
/// ```toml
/// name = "filelister"
/// version = "0.1.0"
/// protocol_version = 1
/// capabilities = ["read:config/**", "write:output/**", "env:API_KEY"]
/// ```
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The plugin's name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// The app protocol version it speaks.
    pub protocol_version: u32,
    /// The capabilities it requests.
    pub capabilities: Vec<Capability>,
}

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("could not read the manifest {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML of the expected shape.
    #[error("the manifest {} is not valid: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The name is empty.
    #[error("the manifest {} has an empty name", path.display())]
    EmptyName {
        /// The file.
        path: PathBuf,
    },
    /// Some capabilities are malformed; all of them are listed.
    #[error("the manifest {} requests malformed capabilities: {}", path.display(),
        errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Capabilities {
        /// The file.
        path: PathBuf,
        /// Every bad entry.
        errors: Vec<CapabilityError>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    version: String,
    protocol_version: u32,
    #[serde(default)]
    capabilities: Vec<String>,
}

impl Manifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Manifest::parse(&text, path)
    }

    /// Validates manifest text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let raw: Raw = toml::from_str(text).map_err(|err| ManifestError::Parse {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
        if raw.name.trim().is_empty() {
            return Err(ManifestError::EmptyName {
                path: path.to_owned(),
            });
        }
        let capabilities =
            parse_all(&raw.capabilities).map_err(|errors| ManifestError::Capabilities {
                path: path.to_owned(),
                errors,
            })?;
        Ok(Manifest {
            name: raw.name,
            version: raw.version,
            protocol_version: raw.protocol_version,
            capabilities,
        })
    }
}
