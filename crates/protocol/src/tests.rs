use crate::*;

fn unix(app: u32, addr: &str) -> Handshake {
    Handshake {
        core_version: 1,
        app_version: app,
        network: Network::Unix,
        address: addr.to_owned(),
        protocol: Protocol::Grpc,
        server_cert: None,
        multiplex: false,
    }
}

#[test]
fn formats_six_fields_with_empty_cert() {
    assert_eq!(
        unix(2, "/tmp/x/plugin.sock").to_string(),
        "1|2|unix|/tmp/x/plugin.sock|grpc|"
    );
}

#[test]
fn formats_cert_and_mux_only_when_present() {
    let mut line = unix(1, "/s");
    line.server_cert = Some("Q0VSVA".into());
    line.multiplex = true;
    assert_eq!(line.to_string(), "1|1|unix|/s|grpc|Q0VSVA|true");
}

#[test]
fn round_trips_every_shape() {
    let mut all = vec![unix(7, "/a/b.sock")];
    let mut tcp = unix(1, "127.0.0.1:10000");
    tcp.network = Network::Tcp;
    tcp.server_cert = Some("AAAA".into());
    all.push(tcp);
    let mut mux = unix(3, "/m");
    mux.multiplex = true;
    all.push(mux);
    for line in all {
        assert_eq!(line.to_string().parse::<Handshake>(), Ok(line));
    }
}

#[test]
fn parses_go_plugin_lines() {
    // Five fields (no cert field) and a trailing newline, as older plugins print.
    let parsed: Handshake = "1|1|unix|/tmp/plugin123|grpc\n".parse().unwrap();
    assert_eq!(parsed, unix(1, "/tmp/plugin123"));
    // Four fields: netrpc.
    let old: Handshake = "1|1|tcp|127.0.0.1:1234".parse().unwrap();
    assert_eq!(old.protocol, Protocol::NetRpc);
    assert_eq!(old.network, Network::Tcp);
}

#[test]
fn rejects_bad_lines_with_the_field_named() {
    let cases: &[(&str, HandshakeParseError)] = &[
        (
            "hello world",
            HandshakeParseError::TooFewFields { found: 1 },
        ),
        ("", HandshakeParseError::TooFewFields { found: 1 }),
        (
            "1|1|unix|/a|grpc||true|x",
            HandshakeParseError::TooManyFields { found: 8 },
        ),
        (
            "x|1|unix|/a|grpc|",
            HandshakeParseError::InvalidField {
                position: 1,
                name: "core protocol version",
                value: "x".into(),
                expected: "a decimal integer",
            },
        ),
        (
            "1|-2|unix|/a|grpc|",
            HandshakeParseError::InvalidField {
                position: 2,
                name: "app protocol version",
                value: "-2".into(),
                expected: "a decimal integer",
            },
        ),
        (
            "1|1|udp|/a|grpc|",
            HandshakeParseError::InvalidField {
                position: 3,
                name: "network",
                value: "udp".into(),
                expected: "`unix` or `tcp`",
            },
        ),
        (
            "1|1|unix||grpc|",
            HandshakeParseError::InvalidField {
                position: 4,
                name: "address",
                value: "".into(),
                expected: "a socket path or host:port",
            },
        ),
        (
            "1|1|unix|/a|http|",
            HandshakeParseError::InvalidField {
                position: 5,
                name: "protocol",
                value: "http".into(),
                expected: "`grpc` or `netrpc`",
            },
        ),
        (
            "1|1|unix|/a|grpc||yes",
            HandshakeParseError::InvalidField {
                position: 7,
                name: "multiplex",
                value: "yes".into(),
                expected: "`true` or `false`",
            },
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(
            line.parse::<Handshake>().as_ref(),
            Err(expected),
            "{line:?}"
        );
    }
}

#[test]
fn parse_error_messages_say_what_was_expected() {
    let err = "1|1|udp|/a|grpc|".parse::<Handshake>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "field 3 (network) is `udp`, expected `unix` or `tcp`"
    );
}

#[test]
fn negotiation_picks_the_highest_common_version() {
    assert_eq!(negotiate(&[2, 3], &[1, 2]), Some(2));
    assert_eq!(negotiate(&[1, 2, 3], &[3, 1, 2]), Some(3));
    assert_eq!(negotiate(&[4, 5], &[1, 2]), None);
    assert_eq!(negotiate(&[], &[1]), None);
}

#[test]
fn version_lists_round_trip_and_skip_junk() {
    assert_eq!(format_versions(&[2, 3]), "2,3");
    assert_eq!(parse_versions("2,3"), [2, 3]);
    assert_eq!(parse_versions(" 1, x ,5,"), [1, 5]);
    assert!(parse_versions("").is_empty());
}

#[test]
fn a_certificate_that_would_not_format_back_is_rejected() {
    // Found by the `handshake` fuzz target: whitespace in the certificate field was kept,
    // but formatting the line again made it the last field, where it was trimmed away.
    for (line, cert) in [
        ("1|1|unix|a|netrpc|\u{b}|false", "\u{b}"),
        ("1|1|unix|/a|grpc|Q0VS VA|true", "Q0VS VA"),
        ("1|1|unix|/a|grpc|Q0VSVA==", "Q0VSVA=="),
        ("1|1|unix|/a|grpc|Q0VSV", "Q0VSV"),
    ] {
        assert_eq!(
            line.parse::<Handshake>(),
            Err(HandshakeParseError::InvalidField {
                position: 6,
                name: "server certificate",
                value: cert.into(),
                expected: "base64 (standard alphabet, no padding)",
            }),
            "{line:?}"
        );
    }
    let line: Handshake = "1|1|unix|/a|grpc|Q0VSVA+/|true".parse().unwrap();
    assert_eq!(line.server_cert.as_deref(), Some("Q0VSVA+/"));
}
