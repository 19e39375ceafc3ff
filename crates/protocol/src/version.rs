//! The magic cookie and app-protocol version negotiation.

use std::borrow::Cow;

/// What host and plugin must agree on before anything else: the magic cookie pair.
///
/// The cookie is a usability guard (a plugin run by hand explains itself instead of
/// printing a handshake nobody reads), not a security boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// The environment variable the host sets, for example `BASIC_PLUGIN`.
    pub magic_cookie_key: Cow<'static, str>,
    /// Its value, for example `hello`.
    pub magic_cookie_value: Cow<'static, str>,
}

impl HandshakeConfig {
    /// A cookie pair usable in a `const`.
    pub const fn new(key: &'static str, value: &'static str) -> Self {
        HandshakeConfig {
            magic_cookie_key: Cow::Borrowed(key),
            magic_cookie_value: Cow::Borrowed(value),
        }
    }
}

/// The highest version both sides support, if any.
pub fn negotiate(host_accepts: &[u32], plugin_serves: &[u32]) -> Option<u32> {
    plugin_serves
        .iter()
        .copied()
        .filter(|version| host_accepts.contains(version))
        .max()
}

/// Formats versions as `PLUGIN_PROTOCOL_VERSIONS` carries them: `1,2,3`.
pub fn format_versions(versions: &[u32]) -> String {
    versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `PLUGIN_PROTOCOL_VERSIONS`; entries that are not integers are skipped, as
/// go-plugin does, so one bad entry does not hide the others.
pub fn parse_versions(value: &str) -> Vec<u32> {
    value
        .split(',')
        .filter_map(|part| part.trim().parse().ok())
        .collect()
}
