//! `tether policy check` and `tether policy explain`.
//!
//! [`Policy::load_toml`] is the authority on what is valid. To say *where* an error is,
//! the file is also read here with spans (a mirror of its shape), and every grant and
//! denial is checked on its own by the same authority, so each error gets its line.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use tether_hostserve::{Explanation, Lifetime, Policy, PolicyError};
use toml::Spanned;

use crate::out::Out;
use crate::{KindArgs, Outcome, kinds};

/// The policy file's shape, with the places of its values.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mirror {
    #[serde(default)]
    plugins: BTreeMap<String, Spanned<Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[expect(
        dead_code,
        reason = "read to check its type and place; the authority resolves it"
    )]
    workspace: Option<Spanned<String>>,
    sha256: Option<Spanned<String>>,
    publisher: Option<Spanned<String>>,
    #[serde(default)]
    grant: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    deny: Vec<Spanned<toml::Value>>,
}

/// One error, and where it is.
struct Problem {
    span: Option<Range<usize>>,
    message: String,
}

/// Line and column (both from 1) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    (line, column)
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("could not read the policy file {}", file.display()))
}

/// The directory relative workspaces are resolved against: the file's own.
fn base(file: &Path) -> std::path::PathBuf {
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    absolute
        .parent()
        .map_or_else(|| Path::new(".").to_owned(), Path::to_owned)
}

/// The text of a grant or denial: the string, or a grant table's `capability`.
fn capability_of(value: &toml::Value, source: &str) -> String {
    match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Table(table) => match table.get("capability") {
            Some(toml::Value::String(text)) => text.clone(),
            _ => source.trim().to_owned(),
        },
        _ => source.trim().to_owned(),
    }
}

/// The last line of a TOML parser message: the message without its excerpt.
fn parser_message(message: &str) -> String {
    message
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or(message)
        .trim()
        .to_owned()
}

const KIND_HINT: &str =
    " (a kind of the host's own? declare it: --kind NAME:ACTIONS:none|path|name)";

/// Checks one grant (`list` = "grant") or denial ("deny") on its own, with the authority.
fn check_item(
    kinds: &KindArgs,
    text: &str,
    plugin: &str,
    list: &str,
    item: &Spanned<toml::Value>,
) -> anyhow::Result<Vec<Problem>> {
    let source = text.get(item.span()).unwrap_or_default();
    let alone = format!("[plugins.p]\n{list} = [{source}]\n");
    let policy = kinds::policy(kinds)?;
    let what = if list == "grant" { "grant" } else { "denial" };
    let named = capability_of(item.get_ref(), source);
    let problem = |message: String| Problem {
        span: Some(item.span()),
        message: format!("plugin `{plugin}`: {what} {named:?}: {message}"),
    };
    Ok(match policy.load_toml(&alone, Path::new("/")) {
        Ok(()) => Vec::new(),
        Err(PolicyError::Capabilities { errors, .. }) => errors
            .into_iter()
            .map(|err| {
                let hint = if err.reason.contains("unknown capability kind") {
                    KIND_HINT
                } else {
                    ""
                };
                problem(format!("{}{hint}", err.reason))
            })
            .collect(),
        Err(PolicyError::Parse { message, .. }) => vec![problem(parser_message(&message))],
        Err(other) => vec![problem(other.to_string())],
    })
}

/// How long a grant of the file lasts, as written.
fn lifetime_text(value: &toml::Value) -> String {
    let toml::Value::Table(table) = value else {
        return "until revoked".to_owned();
    };
    let mut parts = Vec::new();
    if let Some(toml::Value::String(text)) = table.get("expires_in") {
        parts.push(format!("for {text} from loading"));
    }
    if let Some(toml::Value::String(text)) = table.get("expires_at") {
        parts.push(format!("until {text}"));
    }
    if let Some(toml::Value::Integer(uses)) = table.get("uses") {
        parts.push(format!("{uses} use{}", if *uses == 1 { "" } else { "s" }));
    }
    if parts.is_empty() {
        "until revoked".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `tether policy check FILE`.
pub(crate) fn check(out: &Out, file: &Path, kinds: &KindArgs) -> anyhow::Result<Outcome> {
    let text = read(file)?;
    let policy = kinds::policy(kinds)?;
    let authority = policy.load_toml(&text, &base(file));
    let mut problems = Vec::new();
    match toml::from_str::<Mirror>(&text) {
        Err(err) => problems.push(Problem {
            span: err.span(),
            message: err.message().trim().to_owned(),
        }),
        Ok(mirror) => {
            for (plugin, entry) in &mirror.plugins {
                let entry = entry.get_ref();
                if let Some(digest) = &entry.sha256
                    && let Err(err) = digest.get_ref().parse::<tether_host::Sha256>()
                {
                    problems.push(Problem {
                        span: Some(digest.span()),
                        message: format!("plugin `{plugin}`: sha256 {err}"),
                    });
                }
                if let Some(key) = &entry.publisher
                    && let Err(err) = key.get_ref().parse::<tether_hostserve::PublisherKey>()
                {
                    problems.push(Problem {
                        span: Some(key.span()),
                        message: format!("plugin `{plugin}`: publisher {err}"),
                    });
                }
                for item in &entry.grant {
                    problems.extend(check_item(kinds, &text, plugin, "grant", item)?);
                }
                for item in &entry.deny {
                    problems.extend(check_item(kinds, &text, plugin, "deny", item)?);
                }
            }
            if problems.is_empty() {
                if let Err(err) = &authority {
                    // Valid item by item, refused as a whole: say what the authority said.
                    problems.push(Problem {
                        span: None,
                        message: err.to_string(),
                    });
                } else {
                    summarise(out, file, &text, &policy, &mirror);
                    return Ok(Outcome::Clean);
                }
            }
        }
    }
    problems.sort_by_key(|problem| problem.span.as_ref().map_or(usize::MAX, |s| s.start));
    let name = file.display();
    for problem in &problems {
        match &problem.span {
            Some(span) => {
                let (line, column) = line_column(&text, span.start);
                println!(
                    "{}: {} {}",
                    out.bold(&format!("{name}:{line}:{column}")),
                    out.red("error:"),
                    problem.message
                );
                if let Some(source) = text.lines().nth(line - 1) {
                    println!("{}", out.dim(&format!("{line:>5} | {source}")));
                }
            }
            None => println!(
                "{}: {} {}",
                out.bold(&name.to_string()),
                out.red("error:"),
                problem.message
            ),
        }
    }
    let count = problems.len();
    println!(
        "{name}: {}",
        out.red(&format!(
            "not valid, {count} error{}",
            if count == 1 { "" } else { "s" }
        ))
    );
    Ok(Outcome::Problems)
}

fn summarise(out: &Out, file: &Path, text: &str, policy: &Policy, mirror: &Mirror) {
    let capability = |item: &Spanned<toml::Value>| {
        capability_of(item.get_ref(), text.get(item.span()).unwrap_or_default())
    };
    let count = mirror.plugins.len();
    println!(
        "{}: {}",
        file.display(),
        out.green(&format!(
            "valid, {count} plugin{}",
            if count == 1 { "" } else { "s" }
        ))
    );
    for (plugin, entry) in &mirror.plugins {
        let entry = entry.get_ref();
        let workspace = policy.workspace(plugin).map_or_else(
            || "no workspace".to_owned(),
            |dir| format!("workspace {}", dir.display()),
        );
        let grants = if entry.grant.is_empty() {
            "grants nothing".to_owned()
        } else {
            let list: Vec<String> = entry
                .grant
                .iter()
                .map(|item| format!("{} ({})", capability(item), lifetime_text(item.get_ref())))
                .collect();
            format!("grants {}", list.join(", "))
        };
        let denies = if entry.deny.is_empty() {
            "denies nothing".to_owned()
        } else {
            let list: Vec<String> = entry.deny.iter().map(capability).collect();
            format!("denies {}", list.join(", "))
        };
        let mut pinned = match policy.pinned_sha256(plugin) {
            Some(digest) => format!("; binary pinned to sha256 {digest}"),
            None => String::new(),
        };
        if let Some(key) = policy.publisher(plugin) {
            pinned.push_str(&format!("; binary vouched for by publisher {key}"));
        }
        println!(
            "  {}: {workspace}; {grants}; {denies}{pinned}",
            out.bold(plugin)
        );
    }
}

fn lifetime_now(lifetime: &Lifetime) -> String {
    let mut parts = Vec::new();
    if let Some(expires) = lifetime.expires() {
        parts.push(format!(
            "until {}",
            humantime::format_rfc3339_seconds(expires)
        ));
    }
    if let Some(uses) = lifetime.remaining_uses() {
        parts.push(format!(
            "{uses} use{} left; explaining spends none",
            if uses == 1 { "" } else { "s" }
        ));
    }
    if parts.is_empty() {
        "until revoked".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `tether policy explain FILE PLUGIN CAPABILITY`.
pub(crate) fn explain(
    out: &Out,
    file: &Path,
    plugin: &str,
    request: &str,
    kinds: &KindArgs,
) -> anyhow::Result<Outcome> {
    let text = read(file)?;
    let policy = kinds::policy(kinds)?;
    if let Err(err) = policy.load_toml(&text, &base(file)) {
        bail!(
            "the policy file {} does not load (`tether policy check {}` shows every error with \
             its line): {err}",
            file.display(),
            file.display()
        );
    }
    let need = policy.kinds().need(request).map_err(|err| {
        let hint = if err.reason.contains("unknown capability kind") {
            KIND_HINT
        } else {
            ""
        };
        anyhow::anyhow!("the request is not well formed: {err}{hint}")
    })?;
    let named = toml::from_str::<Mirror>(&text)
        .map(|mirror| mirror.plugins.contains_key(plugin))
        .unwrap_or(true);
    match policy.explain(plugin, &need) {
        Explanation::Allowed {
            grant,
            lifetime,
            workspace,
        } => {
            println!("{} `{plugin}` may {need}", out.green("allowed:"));
            println!("  by the grant `{grant}` ({})", lifetime_now(&lifetime));
            if let Some(workspace) = workspace {
                println!("  workspace: {}", workspace.display());
            }
            Ok(Outcome::Clean)
        }
        Explanation::Denied { by_rule } => {
            println!("{} `{plugin}` may not {need}", out.red("denied:"));
            println!(
                "  by the denial `{by_rule}` (a denial wins over every grant and the decision \
                 hook)"
            );
            Ok(Outcome::Problems)
        }
        Explanation::NotCovered { spent, hook } => {
            println!(
                "{} no grant covers `{need}` for `{plugin}`",
                out.red("denied:")
            );
            if !named {
                println!("  the policy file has no entry for `{plugin}`");
            }
            for grant in spent {
                match grant.expired {
                    Some(at) => println!(
                        "  the grant `{}` would, but it expired at {}",
                        grant.grant,
                        humantime::format_rfc3339_seconds(at)
                    ),
                    None => println!(
                        "  the grant `{}` would, but it has no uses left",
                        grant.grant
                    ),
                }
            }
            if let Some(hook) = hook {
                println!("  the decision hook `{hook}` would be asked");
            }
            println!("  to allow it, grant `{need}` or a pattern that covers it");
            Ok(Outcome::Problems)
        }
        Explanation::Invalid(reason) | Explanation::Undeclared(reason) => {
            bail!("the request is not well formed: {reason}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_count_from_one() {
        let text = "a\nbc\néd";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 2));
        assert_eq!(line_column(text, 5), (3, 1));
        assert_eq!(line_column(text, 7), (3, 2));
        assert_eq!(line_column(text, 99), (3, 3));
    }

    #[test]
    fn lifetimes_are_said_as_written() {
        let value: toml::Value = toml::from_str::<toml::Table>(
            "g = { capability = \"read:x\", expires_in = \"8h\", uses = 1 }",
        )
        .unwrap()["g"]
            .clone();
        assert_eq!(lifetime_text(&value), "for 8h from loading, 1 use");
        assert_eq!(
            lifetime_text(&toml::Value::String("read:x".into())),
            "until revoked"
        );
    }
}
