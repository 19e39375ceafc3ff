//! The host's own capability kinds, from `--kind NAME:ACTIONS:RESOURCE`.

use anyhow::{Context as _, bail};
use tether_hostserve::{CapabilityKind, Policy, Resource};

use crate::KindArgs;

/// Parses one `--kind` value: `bus:publish,subscribe:path`, `counter:incr:none`.
pub(crate) fn parse(spec: &str) -> anyhow::Result<CapabilityKind> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [name, actions, resource] = parts[..] else {
        bail!(
            "--kind {spec:?}: expected NAME:ACTIONS:RESOURCE, e.g. `bus:publish,subscribe:path` \
             or `counter:incr:none` (ACTIONS may be empty: `tag::name`)"
        );
    };
    let resource = match resource {
        "none" => Resource::NONE,
        "path" => Resource::PATH,
        "name" => Resource::NAME,
        other => bail!("--kind {spec:?}: the resource {other:?} is not one of none, path, name"),
    };
    let actions: Vec<&str> = if actions.is_empty() {
        Vec::new()
    } else {
        actions.split(',').collect()
    };
    Ok(CapabilityKind::new(name)
        .actions(actions)
        .resource(resource))
}

/// An empty policy over the built-in kinds and those of `args`.
pub(crate) fn policy(args: &KindArgs) -> anyhow::Result<Policy> {
    let policy = Policy::new();
    for spec in &args.kinds {
        policy
            .declare(parse(spec)?)
            .with_context(|| format!("--kind {spec:?}"))?;
    }
    Ok(policy)
}
