//! Keeps README.md's guides true: every `rust`, `protobuf` or `toml` code block in the
//! README must appear, line for line (indentation aside), in the repository file that the
//! prose before it names last (a backticked path to an existing file). So "Add a host
//! service function", "Add a new host service" and "Add a plugin" show the code exactly as
//! it is, and a change to that code that forgets the guide fails `cargo xtask test`.

#![cfg(test)]

use std::path::Path;

use crate::project_root;

/// Languages of the blocks that are checked (shell commands are not code in a file).
const CHECKED: [&str; 3] = ["rust", "protobuf", "toml"];

/// One checked block: the file it must be in, its first line number in the README, its lines.
#[derive(Debug)]
struct Block {
    file: Option<String>,
    line: usize,
    lines: Vec<String>,
}

/// The backticked paths in `line` that name files of the repository.
fn file_paths(root: &Path, line: &str) -> Vec<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .filter(|token| token.contains('/') && root.join(token).is_file())
        .map(str::to_owned)
        .collect()
}

fn blocks(root: &Path, readme: &str) -> Vec<Block> {
    enum State {
        Prose,
        Checked(Block),
        Skipped,
    }
    let mut blocks = Vec::new();
    let mut file: Option<String> = None;
    let mut state = State::Prose;
    for (number, line) in readme.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        state = match (state, fence) {
            (State::Checked(block), Some(_)) => {
                blocks.push(block);
                State::Prose
            }
            (State::Skipped, Some(_)) => State::Prose,
            (State::Checked(mut block), None) => {
                block.lines.push(line.trim().to_owned());
                State::Checked(block)
            }
            (State::Skipped, None) => State::Skipped,
            (State::Prose, Some(language)) if CHECKED.contains(&language.trim()) => {
                State::Checked(Block {
                    file: file.clone(),
                    line: number + 1,
                    lines: Vec::new(),
                })
            }
            (State::Prose, Some(_)) => State::Skipped,
            (State::Prose, None) => {
                if let Some(path) = file_paths(root, line).pop() {
                    file = Some(path);
                }
                State::Prose
            }
        };
    }
    blocks
}

/// Whether `needle`'s lines appear consecutively in `haystack` (each line trimmed).
fn contains_lines(haystack: &str, needle: &[String]) -> bool {
    let lines: Vec<&str> = haystack.lines().map(str::trim).collect();
    needle.is_empty()
        || lines
            .windows(needle.len())
            .any(|window| window.iter().zip(needle).all(|(a, b)| a == b))
}

#[test]
fn every_code_block_of_the_readme_is_in_the_file_it_names() {
    let root = project_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = blocks(&root, &readme);
    let mut failures = Vec::new();
    for block in &blocks {
        let Some(file) = &block.file else {
            failures.push(format!(
                "README.md line {}: no file named before this block",
                block.line
            ));
            continue;
        };
        let text = std::fs::read_to_string(root.join(file)).expect("a file the README names");
        if !contains_lines(&text, &block.lines) {
            failures.push(format!(
                "README.md line {}: this block is not in {file} as written; update the guide \
                 or the code so they agree",
                block.line
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The guides are there and checked (a change of format must not make this vacuous).
    assert!(blocks.len() >= 12, "only {} checked blocks", blocks.len());
    for guide in [
        "## Add a host service function",
        "## Add a new host service",
        "## Add a plugin",
    ] {
        assert!(readme.contains(guide), "README.md lost its {guide:?} guide");
    }
}

#[test]
fn a_block_that_drifted_from_its_file_is_caught() {
    let root = project_root();
    let readme = "In `xtask/src/guides.rs`:\n\n```rust\nfn this_is_not_in_the_file() {}\n```\n\
                  ```sh\ncargo nothing\n```\n\
                  ```rust\n    fn contains_lines(haystack: &str, needle: &[String]) -> bool {\n```\n";
    let blocks = blocks(&root, readme);
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert!(
        blocks
            .iter()
            .all(|b| b.file.as_deref() == Some("xtask/src/guides.rs"))
    );
    let text = std::fs::read_to_string(root.join("xtask/src/guides.rs")).expect("this file");
    assert!(!contains_lines(&text, &blocks[0].lines), "drift is caught");
    assert!(
        contains_lines(&text, &blocks[1].lines),
        "indentation is ignored"
    );
}
