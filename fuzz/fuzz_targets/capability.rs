//! The capability grammar (`Capability::from_str`) and what a parsed capability covers.
//!
//! Input: a capability on the first line, then requested resources, one a line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_hostserve::fuzzing::parse_path;
use tether_hostserve::{Capability, Need, Verb};

const VERBS: [Verb; 4] = [Verb::Read, Verb::Write, Verb::Delete, Verb::Env];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let Some(first) = lines.next() else {
        return;
    };
    let capability = match first.parse::<Capability>() {
        Ok(capability) => capability,
        Err(err) => {
            assert_eq!(err.capability, first);
            assert!(err.to_string().contains(&format!("{first:?}")));
            return;
        }
    };
    assert_eq!(capability.as_str(), first);
    assert_eq!(capability.to_string(), first);
    assert_eq!(first.parse::<Capability>().as_ref(), Ok(&capability));
    let (verb, pattern) = first
        .split_once(':')
        .expect("a parsed capability has a verb");
    let Some(own) = capability.verb() else {
        panic!("{first:?} parsed without a built-in verb");
    };
    assert_eq!(own.as_str(), verb);
    let wild = pattern.contains('*');
    for request in lines {
        for other in VERBS {
            if other != own {
                assert!(
                    !capability.covers(&Need::verb(other, request)),
                    "{first:?} {request:?}"
                );
            }
        }
        let covered = capability.covers(&Need::verb(own, request));
        match capability.base() {
            None => assert_eq!(covered, request == pattern, "{first:?} {request:?}"),
            Some(base) => {
                if !wild {
                    // Without a wildcard, a pattern names exactly one path.
                    assert_eq!(covered, request == pattern, "{first:?} {request:?}");
                }
                if covered && parse_path(request.as_bytes()).is_ok() {
                    // A grant never reaches outside its base directory.
                    let components: Vec<&str> = request.split('/').collect();
                    assert!(
                        components.len() >= base.len()
                            && base.iter().zip(&components).all(|(b, c)| b == c),
                        "{first:?} covers {request:?} outside {base:?}"
                    );
                }
            }
        }
    }
});
