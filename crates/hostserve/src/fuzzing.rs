//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`).
//!
//! Not a stable API: this module exists only so that the coverage-guided fuzzers can reach
//! parsers that are private to this crate. It may change or vanish in any release.

use crate::capability::{Capability, CapabilityError};
use crate::path::{self, PathError, RequestPath};

/// The lexical check on a path a plugin sent; on success, the path as checked.
pub fn parse_path(raw: &[u8]) -> Result<String, PathError> {
    RequestPath::parse(raw).map(|path| path.as_str().to_owned())
}

/// How the audit log shows a raw path.
pub fn display_path(raw: &[u8]) -> String {
    path::display(raw)
}

/// Parses a list of capabilities as a manifest or a policy entry does, collecting every error.
pub fn parse_capabilities(list: &[String]) -> Result<Vec<Capability>, Vec<CapabilityError>> {
    crate::policy::parse_all(&crate::capability::Kinds::builtin(), list)
}
