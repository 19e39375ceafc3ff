//! The sample workspace the demo runs on when none is given: a few documents the plugins
//! may read, a `secrets/` directory no plugin is granted, and nothing else.

use std::path::Path;

use anyhow::{Context, Result};

/// Every sample file: path in the workspace, contents.
const FILES: &[(&str, &str)] = &[
    (
        "docs/README.md",
        "# Sample documents\n\nThe tether demo's plugins list and read these files through host services.\n",
    ),
    (
        "docs/guide.md",
        "# Guide\n\nPlugins never open files themselves.\nEvery access is a host-service call,\nchecked and audited.\n",
    ),
    (
        "docs/notes.txt",
        "capabilities are granted by the operator\nrequests in plugin.toml are not grants\n",
    ),
    (
        "docs/drafts/ideas.md",
        "# Ideas\n\n- a plugin marketplace\n",
    ),
    (
        "secrets/api-token.txt",
        "sk-demo-not-a-real-token: no plugin is granted secrets/\n",
    ),
];

/// Writes the sample files into `workspace`, creating it.
pub(crate) fn create(workspace: &Path) -> Result<()> {
    for (path, contents) in FILES {
        let path = workspace.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating the sample directory {}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("writing the sample file {}", path.display()))?;
    }
    Ok(())
}
