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
fn a_tether_plugin_that_takes_frames_says_so_in_field_5() {
    let line: Handshake = "1|1|unix|/tmp/p.sock|tether-frames|".parse().unwrap();
    assert_eq!(line.protocol, Protocol::TetherFrames);
    assert_eq!(line.to_string(), "1|1|unix|/tmp/p.sock|tether-frames|");
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
                expected: "`grpc`, `netrpc` or `tether-frames`",
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

mod properties {
    use proptest::prelude::*;

    use crate::*;

    fn handshake() -> impl Strategy<Value = Handshake> {
        (
            any::<u32>(),
            any::<u32>(),
            prop_oneof![Just(Network::Unix), Just(Network::Tcp)],
            "[^|]{1,40}",
            prop_oneof![
                Just(Protocol::Grpc),
                Just(Protocol::NetRpc),
                Just(Protocol::TetherFrames)
            ],
            proptest::option::of(
                "[A-Za-z0-9+/]{1,64}".prop_filter("a base64 length", |cert| cert.len() % 4 != 1),
            ),
            any::<bool>(),
        )
            .prop_map(
                |(
                    core_version,
                    app_version,
                    network,
                    address,
                    protocol,
                    server_cert,
                    multiplex,
                )| {
                    Handshake {
                        core_version,
                        app_version,
                        network,
                        address,
                        protocol,
                        server_cert,
                        multiplex,
                    }
                },
            )
    }

    /// A valid line with field `position` (1-based) replaced by `value`, always 7 fields
    /// so that no field is the last one unless it is field 7.
    fn with_field(handshake: &Handshake, position: usize, value: &str) -> String {
        let mut fields: Vec<String> = format!("{handshake}|false")
            .split('|')
            .take(7)
            .map(str::to_owned)
            .collect();
        fields[position - 1] = value.to_owned();
        fields.join("|")
    }

    fn invalid_at(line: &str) -> Option<usize> {
        match line.parse::<Handshake>() {
            Err(HandshakeParseError::InvalidField { position, .. }) => Some(position),
            _ => None,
        }
    }

    proptest! {
        #[test]
        fn every_handshake_formats_to_a_line_that_parses_back(handshake in handshake()) {
            let line = handshake.to_string();
            prop_assert_eq!(line.parse::<Handshake>(), Ok(handshake.clone()));
            // With the newline a plugin prints, too.
            prop_assert_eq!(format!("{line}\n").parse::<Handshake>(), Ok(handshake));
        }

        #[test]
        fn any_text_parses_or_fails_without_panicking(line in any::<String>()) {
            let _ = line.parse::<Handshake>();
        }

        #[test]
        fn lines_near_the_grammar_parse_to_lines_that_format_back(
            fields in proptest::collection::vec("[0-9a-z/ +|]{0,6}", 0..9)
        ) {
            let line = fields.join("|");
            if let Ok(handshake) = line.parse::<Handshake>() {
                prop_assert_eq!(handshake.to_string().parse::<Handshake>(), Ok(handshake));
            }
        }

        #[test]
        fn too_few_or_too_many_fields_are_counted(
            fields in proptest::collection::vec("[^|]{0,8}", 1..13)
        ) {
            let line = fields.join("|");
            let found = fields.len();
            let parsed = line.parse::<Handshake>();
            match found {
                1..=3 => prop_assert_eq!(parsed, Err(HandshakeParseError::TooFewFields { found })),
                8.. => prop_assert_eq!(parsed, Err(HandshakeParseError::TooManyFields { found })),
                _ => {}
            }
        }

        #[test]
        fn a_version_that_is_not_a_u32_is_named(
            handshake in handshake(),
            bad in prop_oneof![
                "[^|0-9]{1,8}".prop_map(String::from),
                (u64::from(u32::MAX) + 1..u64::MAX).prop_map(|n| n.to_string()),
                "-[0-9]{1,5}".prop_map(String::from),
            ],
        ) {
            prop_assume!(bad.trim().parse::<u32>().is_err());
            prop_assert_eq!(invalid_at(&with_field(&handshake, 1, &bad)), Some(1));
            prop_assert_eq!(invalid_at(&with_field(&handshake, 2, &bad)), Some(2));
        }

        #[test]
        fn a_field_outside_its_domain_is_named(
            handshake in handshake(),
            word in "[^|]{0,8}",
        ) {
            if !["unix", "tcp"].contains(&word.as_str()) {
                prop_assert_eq!(invalid_at(&with_field(&handshake, 3, &word)), Some(3));
            }
            if word.is_empty() {
                prop_assert_eq!(invalid_at(&with_field(&handshake, 4, &word)), Some(4));
            }
            if !["grpc", "netrpc", "tether-frames"].contains(&word.as_str()) {
                prop_assert_eq!(invalid_at(&with_field(&handshake, 5, &word)), Some(5));
            }
            let base64 = word.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/".contains(&b));
            if !base64 || word.len() % 4 == 1 {
                prop_assert_eq!(invalid_at(&with_field(&handshake, 6, &word)), Some(6));
            }
            if !["true", "false", ""].contains(&word.trim_end()) {
                prop_assert_eq!(invalid_at(&with_field(&handshake, 7, &word)), Some(7));
            }
        }

        #[test]
        fn version_lists_round_trip(versions in proptest::collection::vec(any::<u32>(), 0..8)) {
            prop_assert_eq!(parse_versions(&format_versions(&versions)), versions);
        }

        #[test]
        fn version_lists_keep_exactly_the_entries_that_are_numbers(value in "[0-9a-z, +-]{0,24}") {
            let expected: Vec<u32> = value.split(',').filter_map(|v| v.trim().parse().ok()).collect();
            let parsed = parse_versions(&value);
            prop_assert_eq!(&parsed, &expected);
            prop_assert_eq!(parse_versions(&format_versions(&parsed)), parsed);
        }
    }
}
