//! The Landlock ruleset: the filesystem, TCP, and scopes.

use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, Scope,
};

use crate::{Layer, Sandbox, SandboxError};

/// Builds the ruleset of a plugin started from `program`: execute and read on it and its
/// loader closure, read beneath the paths the host allows, sockets in `socket_dir`; TCP
/// (ABI 4) and scopes (ABI 6) when the kernel has them. Returns how many paths it allows.
pub(crate) fn ruleset(
    sandbox: &Sandbox,
    program: &Path,
    socket_dir: &Path,
    abi: i64,
) -> Result<(RulesetCreated, usize), SandboxError> {
    let fail = |reason: String| SandboxError {
        layer: Layer::LandlockFilesystem,
        reason,
    };
    // Up to ABI 9 (pathname Unix sockets); BestEffort drops what the kernel lacks, and
    // the status reports what holds from the kernel's own answer.
    let all = ABI::V9;
    let executable = AccessFs::Execute | AccessFs::ReadFile;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(all))
        .map_err(|err| fail(err.to_string()))?;
    if abi >= 4 {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(all))
            .map_err(|err| fail(err.to_string()))?;
    }
    if abi >= 6 {
        ruleset = ruleset
            .scope(Scope::from_all(all))
            .map_err(|err| fail(err.to_string()))?;
    }
    let mut created = ruleset.create().map_err(|err| fail(err.to_string()))?;

    let binaries = crate::loader::executable_closure(program).map_err(fail)?;
    let mut paths = 0;
    for (path, access) in binaries {
        let fd = PathFd::new(&path).map_err(|err| fail(format!("{}: {err}", path.display())))?;
        let access = if access {
            executable
        } else {
            AccessFs::ReadFile.into()
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|err| fail(format!("{}: {err}", path.display())))?;
        paths += 1;
    }
    for path in &sandbox.read_paths {
        let fd = PathFd::new(path).map_err(|err| fail(format!("{}: {err}", path.display())))?;
        created = created
            .add_rule(PathBeneath::new(fd, AccessFs::from_read(all)))
            .map_err(|err| fail(format!("{}: {err}", path.display())))?;
        paths += 1;
    }
    let fd =
        PathFd::new(socket_dir).map_err(|err| fail(format!("{}: {err}", socket_dir.display())))?;
    // ResolveUnix (ABI 9): connecting to the host's sockets, which live here too.
    let mut socket_access = AccessFs::MakeSock | AccessFs::RemoveFile | AccessFs::ResolveUnix;
    if sandbox.socket_dir_files {
        socket_access |= AccessFs::MakeReg | AccessFs::ReadFile | AccessFs::WriteFile;
    }
    created = created
        .add_rule(PathBeneath::new(fd, socket_access))
        .map_err(|err| fail(format!("{}: {err}", socket_dir.display())))?;
    Ok((created, paths))
}
