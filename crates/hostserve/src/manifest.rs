//! A plugin's manifest (`plugin.toml` beside its binary): what it is and what it asks for.
//! Requests are not grants: the operator's [`crate::Policy`] decides.
//!
//! A manifest may be signed by the plugin's publisher with [minisign]
//! (`minisign -Sm plugin.toml` writes `plugin.toml.minisig`): a policy that names the
//! publisher's key (`publisher = "RW..."`) then starts the plugin only if the signature
//! holds, the manifest names the plugin, and the binary's SHA-256 is the one the manifest
//! names ([`Manifest::load_signed`], [`crate::HostServices::configure`]).
//!
//! [minisign]: https://jedisct1.github.io/minisign/

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tether_host::Sha256;

use serde::Deserialize;

use crate::capability::{Capability, CapabilityError, Kinds};
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
    /// The SHA-256 of the binary it describes (`sha256`), if it names one: a signed manifest
    /// must, to bind the binary.
    pub sha256: Option<Sha256>,
}

/// A publisher's minisign public key: the base64 line of its `minisign.pub` (it starts
/// with `RW`).
#[derive(Clone, PartialEq, Eq)]
pub struct PublisherKey {
    text: String,
    key: minisign_verify::PublicKey,
}

/// Why a text is not a minisign public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a minisign public key: {reason}; give the base64 line of the publisher's \
     minisign.pub (it starts with `RW`)"
)]
pub struct PublisherKeyError {
    /// The text, as given (its first 100 characters).
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for PublisherKey {
    type Err = PublisherKeyError;

    fn from_str(text: &str) -> Result<PublisherKey, PublisherKeyError> {
        let trimmed = text.trim();
        minisign_verify::PublicKey::from_base64(trimmed)
            .map(|key| PublisherKey {
                text: trimmed.to_owned(),
                key,
            })
            .map_err(|err| PublisherKeyError {
                text: text.chars().take(100).collect(),
                reason: err.to_string().to_lowercase(),
            })
    }
}

impl fmt::Display for PublisherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for PublisherKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublisherKey({})", self.text)
    }
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
    /// The manifest's signature is missing, malformed, made by another key, or does not
    /// match the manifest.
    #[error("the manifest {} is not signed by the publisher's key: {reason}", path.display())]
    Signature {
        /// The manifest.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// The `sha256` is not a SHA-256 digest.
    #[error("the manifest {}: sha256 {source}", path.display())]
    Digest {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: tether_host::DigestError,
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
    sha256: Option<String>,
}

impl Manifest {
    /// Reads and validates the manifest at `path`, with the built-in capability kinds.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        Manifest::load_with(path, &Kinds::builtin())
    }

    /// Reads the manifest at `path` and its minisign signature at `path` + `.minisig`,
    /// checks that `key` signed exactly these bytes (minisign's prehashed Ed25519; the
    /// legacy algorithm is refused), and validates them with `kinds`. The manifest's text is
    /// read once, and what is validated is what was verified.
    pub fn load_signed(
        path: &Path,
        key: &PublisherKey,
        kinds: &Kinds,
    ) -> Result<Self, ManifestError> {
        let bytes = std::fs::read(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut signature_path = path.as_os_str().to_owned();
        signature_path.push(".minisig");
        let signature_path = PathBuf::from(signature_path);
        let signature_error = |reason: String| ManifestError::Signature {
            path: path.to_owned(),
            reason,
        };
        let signature = std::fs::read_to_string(&signature_path).map_err(|err| {
            signature_error(format!(
                "could not read its signature {}: {err} (sign it with `minisign -Sm {}`)",
                signature_path.display(),
                path.display()
            ))
        })?;
        let signature = minisign_verify::Signature::decode(&signature).map_err(|err| {
            signature_error(format!(
                "{} is not a minisign signature: {}",
                signature_path.display(),
                err.to_string().to_lowercase()
            ))
        })?;
        key.key.verify(&bytes, &signature, false).map_err(|err| {
            signature_error(match err {
                minisign_verify::Error::UnexpectedKeyId => {
                    format!("{} was made with another key", signature_path.display())
                }
                minisign_verify::Error::UnexpectedAlgorithm => format!(
                    "{} uses minisign's legacy algorithm; sign again with a current minisign",
                    signature_path.display()
                ),
                minisign_verify::Error::InvalidSignature => {
                    "the signature does not match the manifest: it was changed after signing"
                        .to_owned()
                }
                other => other.to_string().to_lowercase(),
            })
        })?;
        let text = String::from_utf8(bytes).map_err(|err| ManifestError::Parse {
            path: path.to_owned(),
            message: format!("not UTF-8: {err}"),
        })?;
        Manifest::parse_with(&text, path, kinds)
    }

    /// Reads and validates the manifest at `path`, with `kinds` (for example
    /// `policy.kinds()`, to accept the host's own kinds).
    pub fn load_with(path: &Path, kinds: &Kinds) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Manifest::parse_with(&text, path, kinds)
    }

    /// Validates manifest text with the built-in kinds; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        Manifest::parse_with(text, path, &Kinds::builtin())
    }

    /// Validates manifest text with `kinds`; `path` only names it in errors.
    pub fn parse_with(text: &str, path: &Path, kinds: &Kinds) -> Result<Self, ManifestError> {
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
            parse_all(kinds, &raw.capabilities).map_err(|errors| ManifestError::Capabilities {
                path: path.to_owned(),
                errors,
            })?;
        let sha256 = raw
            .sha256
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|source| ManifestError::Digest {
                path: path.to_owned(),
                source,
            })?;
        Ok(Manifest {
            name: raw.name,
            version: raw.version,
            protocol_version: raw.protocol_version,
            capabilities,
            sha256,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `text` as a TOML basic string.
    pub(crate) fn toml_string(text: &str) -> String {
        let mut out = String::from("\"");
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// `items` as a TOML array of basic strings.
    pub(crate) fn list(items: &[String]) -> String {
        let items: Vec<String> = items.iter().map(|item| toml_string(item)).collect();
        format!("[{}]", items.join(", "))
    }

    fn manifest_text(name: &str, version: &str, protocol: u32, capabilities: &[String]) -> String {
        format!(
            "name = {}\nversion = {}\nprotocol_version = {protocol}\ncapabilities = {}\n",
            toml_string(name),
            toml_string(version),
            list(capabilities)
        )
    }

    fn path() -> &'static Path {
        Path::new("plugins/p/plugin.toml")
    }

    fn capability() -> impl Strategy<Value = String> {
        prop_oneof![
            "(read|write|delete):[a-z]{1,5}(/([a-z]{1,4}|[a-z]?\\*[a-z]?)){0,3}(/\\*\\*)?",
            "env:[A-Z_][A-Z0-9_]{0,8}",
        ]
    }

    fn bad_capability() -> impl Strategy<Value = String> {
        prop_oneof![
            "(read|write):/[a-z]{1,5}",
            "(read|write):[a-z]{1,4}/\\.\\./[a-z]{1,4}",
            "(exec|READ|Read):[a-z]{1,5}",
            "env:[a-z]{1,3}\\*",
            "[a-z]{0,6}",
        ]
    }

    #[test]
    fn the_documented_manifest_parses() {
        let manifest = Manifest::parse(
            "name = \"filelister\"\nversion = \"0.1.0\"\nprotocol_version = 1\n\
             capabilities = [\"read:config/**\", \"write:output/**\", \"env:API_KEY\"]\n",
            path(),
        )
        .unwrap();
        assert_eq!(manifest.name, "filelister");
        assert_eq!(manifest.capabilities.len(), 3);
        assert_eq!(manifest.sha256, None);
    }

    #[test]
    fn a_manifest_names_its_binary_by_digest_and_keys_parse_or_say_why_not() {
        let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let text =
            format!("name = \"p\"\nversion = \"1\"\nprotocol_version = 1\nsha256 = \"{digest}\"\n");
        let manifest = Manifest::parse(&text, path()).unwrap();
        assert_eq!(
            manifest.sha256.map(|d| d.to_string()).as_deref(),
            Some(digest)
        );
        let err = Manifest::parse(&text.replace(digest, "xyz"), path()).unwrap_err();
        assert!(matches!(err, ManifestError::Digest { .. }), "{err:?}");

        let key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        let parsed: PublisherKey = key.parse().unwrap();
        assert_eq!(parsed.to_string(), key);
        let err = "RWQnot".parse::<PublisherKey>().unwrap_err();
        assert!(err.to_string().contains("minisign.pub"), "{err}");

        // An unsigned manifest is refused by `load_signed`, saying how to sign it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plugin.toml");
        std::fs::write(&file, &text).unwrap();
        let err = Manifest::load_signed(&file, &parsed, &Kinds::builtin()).unwrap_err();
        assert!(
            matches!(err, ManifestError::Signature { .. })
                && err.to_string().contains("minisign -Sm"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn every_manifest_written_out_parses_to_what_was_written(
            name in "\\PC*[^\\s]\\PC*|[^\"]{0,4}x",
            version in any::<String>(),
            protocol in any::<u32>(),
            capabilities in proptest::collection::vec(capability(), 0..5),
        ) {
            let text = manifest_text(&name, &version, protocol, &capabilities);
            let manifest = Manifest::parse(&text, path()).expect(&text);
            prop_assert_eq!(manifest.name, name);
            prop_assert_eq!(manifest.version, version);
            prop_assert_eq!(manifest.protocol_version, protocol);
            let parsed: Vec<&str> = manifest.capabilities.iter().map(Capability::as_str).collect();
            prop_assert_eq!(parsed, capabilities.iter().map(String::as_str).collect::<Vec<_>>());
        }

        #[test]
        fn any_text_parses_or_is_refused_naming_the_file(text in any::<String>()) {
            match Manifest::parse(&text, path()) {
                Ok(manifest) => prop_assert!(!manifest.name.trim().is_empty()),
                Err(err) => prop_assert!(err.to_string().contains("plugins/p/plugin.toml")),
            }
        }

        #[test]
        fn a_blank_name_is_refused(name in "[ \\t\\n\\r]{0,4}") {
            let err = Manifest::parse(&manifest_text(&name, "1", 1, &[]), path()).unwrap_err();
            prop_assert!(matches!(err, ManifestError::EmptyName { .. }), "{:?}", err);
        }

        #[test]
        fn every_malformed_capability_is_listed(
            good in proptest::collection::vec(capability(), 0..4),
            bad in proptest::collection::vec(bad_capability(), 1..4),
            at in any::<proptest::sample::Index>(),
        ) {
            let mut all = good;
            let at = at.index(all.len() + 1);
            for (i, bad) in bad.iter().enumerate() {
                all.insert(at + i, bad.clone());
            }
            let err = Manifest::parse(&manifest_text("p", "1", 1, &all), path()).unwrap_err();
            let ManifestError::Capabilities { errors, .. } = err else {
                panic!("expected a capabilities error, got {err:?}");
            };
            let named: Vec<&str> = errors.iter().map(|e| e.capability.as_str()).collect();
            prop_assert_eq!(named, bad.iter().map(String::as_str).collect::<Vec<_>>());
        }

        #[test]
        fn a_wrong_shape_is_a_parse_error(
            key in "[a-z_]{1,10}",
            value in prop_oneof![Just("1"), Just("\"x\""), Just("[]"), Just("-1"), Just("true")],
        ) {
            let known = ["name", "version", "protocol_version", "capabilities"];
            let mut text = manifest_text("p", "1", 1, &[]);
            if known.contains(&key.as_str()) {
                // A known key twice, or with a value of the wrong type.
                text.push_str(&format!("{key} = {value}\n"));
            } else {
                text.push_str(&format!("{key} = 1\n"));
            }
            let err = Manifest::parse(&text, path()).unwrap_err();
            prop_assert!(matches!(err, ManifestError::Parse { .. }), "{:?}", err);
        }
    }
}
