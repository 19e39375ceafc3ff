//! A plugin's stderr as the host reads it: bounded lines, hclog JSON log lines
//! (`LogParser::parse`, `parse_json`), the tail kept for error messages, and the versions a
//! tether plugin announces there.
//!
//! Input: one byte choosing the line limit, then the plugin's stderr.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tether_host::fuzzing::{Stderr, parse_json, plugin_versions, read_lines};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, output)) = data.split_first() else {
        return;
    };
    // Small limits exercise the cutting of long lines; 0 stands for the host's own 64 KiB.
    let limit = match limit {
        0 => 64 * 1024,
        n => usize::from(n),
    };
    let lines = read_lines(output, limit);
    let mut rebuilt = Vec::new();
    for (line, newline) in &lines {
        assert!(line.len() <= limit);
        assert!(!line.contains(&b'\n'));
        rebuilt.extend_from_slice(line);
        if *newline {
            rebuilt.push(b'\n');
        }
    }
    assert_eq!(
        rebuilt, output,
        "the lines are the output, cut and nothing lost"
    );

    let mut stderr = Stderr::default();
    for (line, _) in &lines {
        let parsed = stderr.push(line);
        let text = String::from_utf8_lossy(line);
        if let Some(json) = parse_json(&text) {
            assert_eq!(parsed, json);
            let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&text) else {
                panic!("parsed as hclog JSON, but not a JSON object: {text:?}");
            };
            assert!(map.contains_key("@level") || map.contains_key("@message"));
            let hidden = ["@level", "@message", "@timestamp"]
                .iter()
                .filter(|key| map.contains_key(**key))
                .count();
            assert_eq!(json.fields.len() + hidden, map.len());
            match map.get("@message") {
                Some(Value::String(message)) => assert_eq!(&json.message, message),
                Some(other) => assert_eq!(json.message, other.to_string()),
                None => assert!(json.message.is_empty()),
            }
        } else {
            assert!(parsed.fields.is_empty());
        }
    }
    let tail = stderr.tail();
    assert!(tail.len() <= 4096 + 20, "{}", tail.len());
    let _ = plugin_versions(&tail);
    let _ = plugin_versions(&String::from_utf8_lossy(output));
});
