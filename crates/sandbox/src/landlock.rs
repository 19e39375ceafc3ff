//! The Landlock ruleset: the filesystem, TCP, and scopes.

use std::os::fd::BorrowedFd;
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, Scope,
};

use crate::{DataDir, Layer, Sandbox, SandboxError};

/// Builds the ruleset of a plugin started from `program`: execute and read on it and its
/// loader closure, read beneath the paths the host allows, sockets in `socket_dir`,
/// read-write beneath `data_dir`; TCP (ABI 4) and scopes (ABI 6) when the kernel has them.
/// Returns how many paths it allows. `file`, when given, is the open file of `program` that
/// will be executed: it may execute that file even if the path names another by now.
pub(crate) fn ruleset(
    sandbox: &Sandbox,
    program: &Path,
    file: Option<BorrowedFd<'_>>,
    socket_dir: &Path,
    data_dir: Option<&DataDir>,
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
    if let Some(file) = file {
        created = created
            .add_rule(PathBeneath::new(file, executable))
            .map_err(|err| fail(format!("{} (the verified file): {err}", program.display())))?;
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
    if let Some(data_dir) = data_dir {
        // Everything a program that keeps state needs beneath its own directory: read, list,
        // create, write, truncate, rename (Refer: across its subdirectories) and remove files
        // and directories. Not Execute (it could run what it wrote), not devices, fifos,
        // sockets or symbolic links. The rule is bound to the directory the host checked
        // (an open descriptor), not to its path.
        let data_access = AccessFs::ReadFile
            | AccessFs::ReadDir
            | AccessFs::WriteFile
            | AccessFs::Truncate
            | AccessFs::MakeReg
            | AccessFs::MakeDir
            | AccessFs::RemoveFile
            | AccessFs::RemoveDir
            | AccessFs::Refer;
        created = created
            .add_rule(PathBeneath::new(data_dir, data_access))
            .map_err(|err| fail(format!("{}: {err}", data_dir.path().display())))?;
    }
    Ok((created, paths))
}
