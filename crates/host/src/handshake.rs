//! Reading and checking the plugin's handshake line (go-plugin's
//! `CORE|APP|NETWORK|ADDRESS|PROTOCOL` on its stdout), while watching for an early exit.

use std::time::Duration;

use tether_protocol::{CORE_PROTOCOL_VERSION, Handshake, MAX_HANDSHAKE_LINE, Protocol};
use tokio::io::{AsyncRead, BufReader};
use tokio::time::{Instant, timeout_at};

use tether_transport::tls::{self, Identity, MutualTls};

use crate::error::Error;
use crate::lines::{self, Read, excerpt};
use crate::logs;
use crate::process::Process;

/// What the host expects of a handshake.
pub(crate) struct Expected<'a> {
    /// The plugin's name.
    pub(crate) plugin: &'a str,
    /// The magic cookie's variable, named when the plugin exits early.
    pub(crate) cookie_key: &'a str,
    /// How long the plugin has to print the line.
    pub(crate) start_timeout: Duration,
    /// The app protocol versions the host accepts.
    pub(crate) versions: &'a [u32],
}

/// Reads and checks the handshake line, failing early when the process exits.
pub(crate) async fn read(
    expected: &Expected<'_>,
    process: &mut Process,
    stdout: &mut BufReader<impl AsyncRead + Unpin>,
) -> Result<Handshake, Error> {
    let name = expected.plugin;
    let cookie_key = expected.cookie_key;
    let deadline = Instant::now() + expected.start_timeout;
    let timed_out = |tail: String| Error::HandshakeTimeout {
        plugin: name.to_owned(),
        timeout: expected.start_timeout,
        stderr_tail: tail,
    };
    // Each branch yields a plain value: a `watch::Ref` held across the awaits below
    // would make this future (and `start`'s) not `Send`.
    let first = tokio::select! {
        biased;
        read = lines::read_line(stdout, MAX_HANDSHAKE_LINE) => Ok(read),
        status = process.wait() => Err(Some(status)),
        () = tokio::time::sleep_until(deadline) => Err(None),
    };
    let read = match first {
        Ok(read) => read,
        Err(Some(status)) => return Err(process.exited_early(name, cookie_key, status).await),
        Err(None) => return Err(timed_out(process.settled_tail(false).await)),
    };
    let line = match read {
        Ok(Read::Line(line)) => line,
        Ok(Read::Eof(line)) if !line.is_empty() => line,
        Ok(Read::Eof(_)) | Err(_) => {
            // stdout closed: the process is exiting, or misbehaving until the deadline.
            let exited = timeout_at(deadline, process.wait()).await;
            return match exited {
                Ok(status) => Err(process.exited_early(name, cookie_key, status).await),
                Err(_) => Err(timed_out(process.settled_tail(false).await)),
            };
        }
        Ok(Read::TooLong(prefix)) => {
            return Err(Error::HandshakeTooLong {
                plugin: name.to_owned(),
                limit: MAX_HANDSHAKE_LINE,
                prefix: excerpt(&prefix, 200),
            });
        }
    };
    let text = String::from_utf8_lossy(&line);
    let handshake: Handshake = text.parse().map_err(|reason| Error::NotAHandshake {
        plugin: name.to_owned(),
        line: excerpt(&line, 200),
        reason,
    })?;
    if handshake.core_version != CORE_PROTOCOL_VERSION {
        return Err(Error::CoreVersion {
            plugin: name.to_owned(),
            got: handshake.core_version,
            expected: CORE_PROTOCOL_VERSION,
        });
    }
    if handshake.protocol == Protocol::NetRpc {
        return Err(Error::NetRpc {
            plugin: name.to_owned(),
        });
    }
    if !expected.versions.contains(&handshake.app_version) {
        // A tether plugin said on stderr which versions it serves; collect that.
        let tail = process.settled_tail(true).await;
        return Err(Error::IncompatibleVersion {
            plugin: name.to_owned(),
            offered: handshake.app_version,
            accepted: expected.versions.to_vec(),
            plugin_serves: logs::plugin_versions(&tail),
        });
    }
    Ok(handshake)
}

/// The TLS of the connections to a plugin: none without AutoMTLS; with it, the plugin must
/// have answered with its certificate in field 6 (go-plugin reads that field only beyond 50
/// characters, and so does this).
pub(crate) fn mutual_tls(
    plugin: &str,
    identity: Option<&Identity>,
    server_cert: Option<&str>,
) -> Result<Option<MutualTls>, Error> {
    let failed = |reason: String| Error::AutoMtls {
        plugin: plugin.to_owned(),
        reason,
    };
    let server_cert = server_cert.filter(|field| field.len() > 50);
    match (identity, server_cert) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(failed(
            "the plugin answered with a certificate (handshake field 6), but this host did not \
             ask for AutoMTLS; turn it on with `PluginBuilder::auto_mtls(true)`"
                .to_owned(),
        )),
        (Some(_), None) => Err(failed(
            "the host asked for AutoMTLS (PLUGIN_CLIENT_CERT) but the plugin answered without a \
             certificate (handshake field 6 is empty): it does not speak AutoMTLS (go-plugin \
             plugins do from v1.2); turn AutoMTLS off for this plugin, or upgrade it"
                .to_owned(),
        )),
        (Some(identity), Some(field)) => {
            let certificate =
                tls::certificate_from_handshake(field).map_err(|err| failed(err.to_string()))?;
            MutualTls::new(identity, certificate)
                .map(Some)
                .map_err(|err| failed(err.to_string()))
        }
    }
}

/// Whether the plugin answered multiplexing (field 7) as the host asked.
pub(crate) fn check_multiplex(plugin: &str, asked: bool, answered: bool) -> Result<(), Error> {
    let failed = |reason: &str| Error::Multiplex {
        plugin: plugin.to_owned(),
        reason: reason.to_owned(),
    };
    match (asked, answered) {
        (true, false) => Err(failed(
            "the host asked for multiplexing (PLUGIN_MULTIPLEX_GRPC=true) but the plugin did not \
             agree (no `true` in handshake field 7): it does not support multiplexing (go-plugin \
             plugins do from v1.6); turn multiplexing off for this plugin, or upgrade it",
        )),
        (false, true) => Err(failed(
            "the plugin answered multiplexing (handshake field 7) but this host did not ask for \
             it; turn it on with `PluginBuilder::multiplex(true)`",
        )),
        _ => Ok(()),
    }
}
