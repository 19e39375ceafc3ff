//! The handshake line: `CORE|APP|NETWORK|ADDR|PROTOCOL|CERT[|MUX]`.

use std::fmt;
use std::str::FromStr;

/// The transport named in field 3 of the handshake line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    /// A Unix domain socket; the address is a path.
    Unix,
    /// TCP; the address is `host:port`.
    Tcp,
}

impl Network {
    /// The wire spelling: `unix` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Unix => "unix",
            Network::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The RPC protocol named in field 5 of the handshake line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// gRPC: the only protocol tether speaks.
    Grpc,
    /// Go's `net/rpc`: Go-only; a missing field 5 also means this.
    NetRpc,
    /// tether's own: gRPC's calls carried as tether's frames instead of HTTP/2 (see
    /// `tether_transport::frames`). A tether plugin answers this only to a host that offered
    /// it ([`crate::env::FRAMES`]); it still serves HTTP/2 on the same socket.
    TetherFrames,
}

impl Protocol {
    /// The wire spelling: `grpc`, `netrpc` or `tether-frames`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::NetRpc => "netrpc",
            Protocol::TetherFrames => "tether-frames",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One handshake line, as a plugin prints it on stdout after it started listening.
///
/// Parsing accepts 4 to 7 fields (4 is an old `netrpc` line); formatting always writes at
/// least 6 fields (an empty certificate leaves the line ending in `|`) and writes field 7
/// only when `multiplex` is set, because Go hosts up to go-plugin 1.5 split the line into
/// at most 6 parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Field 1: the core protocol version (`1`).
    pub core_version: u32,
    /// Field 2: the negotiated app protocol version.
    pub app_version: u32,
    /// Field 3.
    pub network: Network,
    /// Field 4: a socket path or `host:port`.
    pub address: String,
    /// Field 5.
    pub protocol: Protocol,
    /// Field 6: AutoMTLS certificate (base64 DER, standard alphabet, no padding).
    pub server_cert: Option<String>,
    /// Field 7: `true` when the plugin agreed to multiplex the broker over the main socket.
    pub multiplex: bool,
}

/// Why a line is not a handshake line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeParseError {
    /// Fewer than 4 `|`-separated fields: usually a stray line of output, not a handshake.
    #[error(
        "expected `CORE|APP|NETWORK|ADDR|PROTOCOL|CERT[|MUX]` (at least 4 `|`-separated fields), found {found}"
    )]
    TooFewFields {
        /// How many fields the line has.
        found: usize,
    },
    /// More than 7 fields.
    #[error("expected at most 7 `|`-separated fields, found {found}")]
    TooManyFields {
        /// How many fields the line has.
        found: usize,
    },
    /// A field has a value outside its domain.
    #[error("field {position} ({name}) is `{value}`, expected {expected}")]
    InvalidField {
        /// 1-based position of the field.
        position: usize,
        /// The field's name.
        name: &'static str,
        /// What the line holds there.
        value: String,
        /// What the field may hold.
        expected: &'static str,
    },
}

fn invalid(
    position: usize,
    name: &'static str,
    value: &str,
    expected: &'static str,
) -> HandshakeParseError {
    HandshakeParseError::InvalidField {
        position,
        name,
        value: value.to_owned(),
        expected,
    }
}

/// Whether `text` could be base64 in the standard alphabet without padding, as go-plugin
/// writes the certificate (`base64.RawStdEncoding`): anything else, whitespace included,
/// would not survive formatting the line again, and a Go host rejects it too.
fn is_raw_base64(text: &str) -> bool {
    text.len() % 4 != 1
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

impl FromStr for Handshake {
    type Err = HandshakeParseError;

    /// Parses one line; surrounding whitespace (the newline) is ignored, as go-plugin does.
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let fields: Vec<&str> = line.trim().split('|').collect();
        match fields.len() {
            found @ 0..=3 => return Err(HandshakeParseError::TooFewFields { found }),
            found @ 8.. => return Err(HandshakeParseError::TooManyFields { found }),
            _ => {}
        }
        let number = |position: usize, name: &'static str| {
            let value = fields[position - 1];
            value
                .parse::<u32>()
                .map_err(|_| invalid(position, name, value, "a decimal integer"))
        };
        let core_version = number(1, "core protocol version")?;
        let app_version = number(2, "app protocol version")?;
        let network = match fields[2] {
            "unix" => Network::Unix,
            "tcp" => Network::Tcp,
            other => return Err(invalid(3, "network", other, "`unix` or `tcp`")),
        };
        let address = fields[3];
        if address.is_empty() {
            return Err(invalid(4, "address", address, "a socket path or host:port"));
        }
        let protocol = match fields.get(4).copied() {
            None | Some("netrpc") => Protocol::NetRpc,
            Some("grpc") => Protocol::Grpc,
            Some("tether-frames") => Protocol::TetherFrames,
            Some(other) => {
                return Err(invalid(
                    5,
                    "protocol",
                    other,
                    "`grpc`, `netrpc` or `tether-frames`",
                ));
            }
        };
        let server_cert = match fields.get(5).copied() {
            None | Some("") => None,
            Some(cert) if is_raw_base64(cert) => Some(cert.to_owned()),
            Some(other) => {
                return Err(invalid(
                    6,
                    "server certificate",
                    other,
                    "base64 (standard alphabet, no padding)",
                ));
            }
        };
        let multiplex = match fields.get(6).copied() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(invalid(7, "multiplex", other, "`true` or `false`")),
        };
        Ok(Handshake {
            core_version,
            app_version,
            network,
            address: address.to_owned(),
            protocol,
            server_cert,
            multiplex,
        })
    }
}

impl fmt::Display for Handshake {
    /// The line without its trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}|{}|{}|{}|{}|{}",
            self.core_version,
            self.app_version,
            self.network,
            self.address,
            self.protocol,
            self.server_cert.as_deref().unwrap_or("")
        )?;
        if self.multiplex {
            f.write_str("|true")?;
        }
        Ok(())
    }
}
