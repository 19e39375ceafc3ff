//! OS confinement of plugin processes (Linux), applied by the host between fork and exec,
//! so a plugin is confined from its first instruction without cooperating.
//!
//! Everything is built in the parent ([`prepare`]): the Landlock ruleset (with its file
//! descriptors), the seccomp programs, the resource limits. Between fork and exec
//! ([`Prepared::apply`]) the child makes only raw system calls on that prepared state:
//! `prlimit64`, `close_range`, `landlock_restrict_self`, `prctl` and `seccomp`.
//!
//! The layers, and what each covers:
//! - resource limits: address space, open files, file size, no core dumps;
//! - file descriptors: everything but 0-2 is closed at exec (`close_range` with
//!   `CLOSE_RANGE_CLOEXEC`), whatever the host process inherited or leaked;
//! - Landlock filesystem: execute and read on the plugin binary and its loader, read on its
//!   shared libraries and `/etc/ld.so.cache`, create and remove sockets in its private
//!   socket directory, and nothing else (no `/proc`, so not the host's environment either);
//! - Landlock network: no TCP bind or connect (ABI 4);
//! - Landlock scopes: no abstract Unix sockets or signals outside the sandbox (ABI 6);
//! - seccomp: an allowlist ([`crate::allowed_syscalls`], each call with its reason);
//!   everything else fails with `ENOSYS`, the dangerous calls by name with `EPERM`; Unix
//!   sockets only, four ioctl requests, a few prctl options and fcntl commands, threads
//!   only unless processes are allowed, never new namespaces or `CLONE_PARENT`.
//!
//! The environment (cleared, plus an allowlist) and the process group with a parent-death
//! signal are applied by the host for every plugin, sandbox or not.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use crate::syscalls;
use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreated, RulesetCreatedAttr, Scope,
};
use rustix::process::{Resource, Rlimit};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// How strictly a plugin is confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Every layer, or the plugin does not start (the error names the missing layer).
    Strict,
    /// Every layer this kernel offers; the others are reported as not enforced.
    #[default]
    BestEffort,
    /// No confinement beyond the cleared environment and the process group (logged as a
    /// warning at every start).
    Off,
}

/// Resource limits set on the plugin process (`None`: inherited from the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceLimits {
    /// `RLIMIT_AS`: bytes of address space (default 4 GiB).
    pub address_space: Option<u64>,
    /// `RLIMIT_NOFILE`: open file descriptors (default 1024).
    pub open_files: Option<u64>,
    /// `RLIMIT_FSIZE`: the largest file the process may write (default 1 GiB).
    pub file_size: Option<u64>,
    /// `RLIMIT_NPROC`: processes and threads of the plugin's user (default unset: shared by
    /// every process of that user, and ignored for root).
    pub processes: Option<u64>,
    /// Whether the plugin may dump core (default no).
    pub core_dumps: bool,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            address_space: Some(4 << 30),
            open_files: Some(1024),
            file_size: Some(1 << 30),
            processes: None,
            core_dumps: false,
        }
    }
}

/// The sandbox settings of one plugin. The default is [`SandboxMode::BestEffort`] with
/// [`ResourceLimits::default`], no new processes, and no extra paths.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    mode: SandboxMode,
    limits: ResourceLimits,
    allow_processes: bool,
    socket_dir_files: bool,
    read_paths: Vec<PathBuf>,
}

impl Sandbox {
    /// Every layer, or refuse to start.
    pub fn strict() -> Self {
        Sandbox {
            mode: SandboxMode::Strict,
            ..Sandbox::default()
        }
    }

    /// Every layer this kernel offers (the default).
    pub fn best_effort() -> Self {
        Sandbox::default()
    }

    /// No confinement (logged as a warning).
    pub fn off() -> Self {
        Sandbox {
            mode: SandboxMode::Off,
            ..Sandbox::default()
        }
    }

    /// The mode.
    pub fn mode(&self) -> SandboxMode {
        self.mode
    }

    /// Replaces the resource limits.
    #[must_use]
    pub fn limits(mut self, limits: ResourceLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Lets the plugin start processes (by default it may start threads only). They stay in
    /// its sandbox and process group; note that nothing then bounds how many it starts
    /// unless [`ResourceLimits::processes`] is set and the plugin does not run as root.
    #[must_use]
    pub fn allow_processes(mut self, allow: bool) -> Self {
        self.allow_processes = allow;
        self
    }

    /// Lets the plugin create, read and write regular files in its private socket
    /// directory (by default it may only make and remove sockets there).
    ///
    /// Plugins built with HashiCorp's go-plugin need it: they create a temporary file in
    /// that directory and bind their socket in its place. The cost: such a plugin can
    /// write files there, each up to [`ResourceLimits::file_size`], and so fill the
    /// filesystem that holds the directory (it is removed when the plugin stops).
    #[must_use]
    pub fn allow_socket_dir_files(mut self, allow: bool) -> Self {
        self.socket_dir_files = allow;
        self
    }

    /// Whether [`Sandbox::allow_socket_dir_files`] is on.
    pub fn socket_dir_files(&self) -> bool {
        self.socket_dir_files
    }

    /// Lets the plugin read (and execute, for files) beneath `path` directly.
    #[must_use]
    pub fn allow_read(mut self, path: impl Into<PathBuf>) -> Self {
        self.read_paths.push(path.into());
        self
    }
}

/// One layer of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    /// `setrlimit`: address space, open files, file size, core dumps.
    ResourceLimits,
    /// Only fds 0-2 survive exec.
    FileDescriptors,
    /// Landlock: the filesystem.
    LandlockFilesystem,
    /// Landlock: TCP bind and connect.
    LandlockNetwork,
    /// Landlock: abstract Unix sockets and signals.
    LandlockScopes,
    /// seccomp: the system call filter.
    Seccomp,
}

impl Layer {
    /// Every layer, in the order they are reported.
    pub const ALL: [Layer; 6] = [
        Layer::ResourceLimits,
        Layer::FileDescriptors,
        Layer::LandlockFilesystem,
        Layer::LandlockNetwork,
        Layer::LandlockScopes,
        Layer::Seccomp,
    ];

    /// Its name as a metric label (`layer` of `tether_sandbox_layer_enforced`):
    /// `resource_limits`, `file_descriptors`, `landlock_filesystem`, `landlock_network`,
    /// `landlock_scopes` or `seccomp`.
    pub fn name(self) -> &'static str {
        match self {
            Layer::ResourceLimits => "resource_limits",
            Layer::FileDescriptors => "file_descriptors",
            Layer::LandlockFilesystem => "landlock_filesystem",
            Layer::LandlockNetwork => "landlock_network",
            Layer::LandlockScopes => "landlock_scopes",
            Layer::Seccomp => "seccomp",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::ResourceLimits => "resource limits",
            Layer::FileDescriptors => "file descriptors",
            Layer::LandlockFilesystem => "landlock filesystem",
            Layer::LandlockNetwork => "landlock network",
            Layer::LandlockScopes => "landlock scopes",
            Layer::Seccomp => "seccomp",
        })
    }
}

/// Whether one layer is enforced on this plugin, and why or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStatus {
    /// The layer.
    pub layer: Layer,
    /// Whether it confines the plugin.
    pub enforced: bool,
    /// What it enforces, or why it does not.
    pub detail: String,
}

/// What confines a plugin: every layer and whether it is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    /// The mode asked for.
    pub mode: SandboxMode,
    /// Every layer, in [`Layer::ALL`] order.
    pub layers: Vec<LayerStatus>,
}

impl SandboxStatus {
    /// Whether `layer` is enforced.
    pub fn is_enforced(&self, layer: Layer) -> bool {
        self.layers
            .iter()
            .any(|status| status.layer == layer && status.enforced)
    }

    /// Whether every layer is enforced.
    pub fn is_complete(&self) -> bool {
        self.layers.iter().all(|status| status.enforced)
    }
}

impl fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}:", self.mode)?;
        for (i, status) in self.layers.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            let state = if status.enforced { "on" } else { "OFF" };
            write!(f, "{sep}{} {state} ({})", status.layer, status.detail)?;
        }
        Ok(())
    }
}

/// Why a sandbox could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("sandbox layer `{layer}`: {reason}")]
pub struct SandboxError {
    /// The layer.
    pub layer: Layer,
    /// What went wrong, or what this kernel lacks.
    pub reason: String,
}

/// A sandbox built in the parent, ready to apply between fork and exec.
pub(crate) struct Prepared {
    rlimits: Vec<(Resource, Rlimit)>,
    close_fds: bool,
    ruleset: Option<RulesetCreated>,
    filters: Vec<BpfProgram>,
    pub(crate) status: SandboxStatus,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// What the running kernel offers the sandbox, probed without starting a plugin: which
/// layers a `Strict` sandbox can build here, and why not where it cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSupport {
    /// The Landlock ABI version; 0 without Landlock (or with it disabled).
    pub landlock_abi: i64,
    /// Whether seccomp filters are available.
    pub seccomp: bool,
    /// Whether `close_range(..., CLOSE_RANGE_CLOEXEC)` is available (Linux 5.11).
    pub close_range: bool,
}

impl KernelSupport {
    /// Probes the running kernel (three cheap system calls).
    pub fn probe() -> Self {
        KernelSupport {
            landlock_abi: landlock_abi(),
            seccomp: seccomp_available(),
            close_range: close_range_cloexec_available(),
        }
    }

    /// Why this kernel cannot enforce `layer`, or `None` when it can.
    pub fn missing(&self, layer: Layer) -> Option<String> {
        let abi = self.landlock_abi;
        let needs_abi = |needed: i64| {
            (abi < needed).then(|| format!("needs Landlock ABI {needed} (this kernel: {abi})"))
        };
        match layer {
            Layer::ResourceLimits => None,
            Layer::FileDescriptors => (!self.close_range)
                .then(|| "close_range(CLOSE_RANGE_CLOEXEC) needs Linux 5.11".to_owned()),
            Layer::LandlockFilesystem => (abi < 1).then(|| {
                "this kernel has no Landlock (or it is not enabled in the `lsm=` boot list)"
                    .to_owned()
            }),
            Layer::LandlockNetwork => needs_abi(4),
            Layer::LandlockScopes => needs_abi(6),
            Layer::Seccomp => {
                (!self.seccomp).then(|| "this kernel has no seccomp filters".to_owned())
            }
        }
    }

    /// Whether this kernel can enforce every layer, so that `Strict` can start plugins.
    pub fn is_complete(&self) -> bool {
        Layer::ALL
            .iter()
            .all(|&layer| self.missing(layer).is_none())
    }
}

/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`: the kernel's
/// Landlock ABI, or 0 if it has none (or it is disabled).
fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer and size 0, this call only reports a version.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    version.max(0)
}

/// Whether seccomp filters are available (`PR_GET_SECCOMP` answers).
fn seccomp_available() -> bool {
    // SAFETY: PR_GET_SECCOMP reads this thread's mode; it fails only without seccomp.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

/// Whether `close_range(…, CLOSE_RANGE_CLOEXEC)` works here (Linux 5.11).
fn close_range_cloexec_available() -> bool {
    // SAFETY: the range holds only fd u32::MAX, which no process has: nothing changes, and
    // the call fails only if the kernel does not know it or its flag.
    let result = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            libc::c_uint::MAX,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    result == 0
}

/// The executable `program` names: itself if it has a `/`, else the first match on the
/// host's `PATH` (as `execvp` would find it). The sandbox allows exactly this file.
pub(crate) fn resolve_program(program: &Path) -> io::Result<PathBuf> {
    let resolved = if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        program.to_owned()
    } else {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "not found on the host's PATH")
            })?
    };
    let metadata = std::fs::metadata(&resolved)?;
    if !metadata.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    std::fs::canonicalize(&resolved)
}

/// Builds the sandbox of a plugin started from `program` (resolved by
/// [`resolve_program`]), whose private socket directory is `socket_dir`.
pub(crate) fn prepare(
    sandbox: &Sandbox,
    program: &Path,
    socket_dir: &Path,
) -> Result<Prepared, SandboxError> {
    let mut status = SandboxStatus {
        mode: sandbox.mode,
        layers: Vec::new(),
    };
    if sandbox.mode == SandboxMode::Off {
        status.layers = Layer::ALL
            .iter()
            .map(|&layer| LayerStatus {
                layer,
                enforced: false,
                detail: "sandbox off".into(),
            })
            .collect();
        return Ok(Prepared {
            rlimits: Vec::new(),
            close_fds: false,
            ruleset: None,
            filters: Vec::new(),
            status,
        });
    }
    let strict = sandbox.mode == SandboxMode::Strict;
    let mut report = |layer: Layer, enforced: bool, detail: String| {
        if strict && !enforced {
            return Err(SandboxError {
                layer,
                reason: format!("{detail}; the plugin is not started (its sandbox is Strict)"),
            });
        }
        status.layers.push(LayerStatus {
            layer,
            enforced,
            detail,
        });
        Ok(())
    };

    let rlimits = rlimits(&sandbox.limits);
    report(
        Layer::ResourceLimits,
        true,
        describe_limits(&sandbox.limits),
    )?;

    let kernel = KernelSupport::probe();
    // Reports a layer this kernel may lack: `on` says what it enforces when it has it.
    let mut report_kernel = |layer: Layer, on: String| match kernel.missing(layer) {
        None => report(layer, true, on),
        Some(why) => report(layer, false, why),
    };
    report_kernel(Layer::FileDescriptors, "only 0-2 survive exec".into())?;

    let abi = kernel.landlock_abi;
    let ruleset = if kernel.missing(Layer::LandlockFilesystem).is_none() {
        let (ruleset, paths) = landlock_ruleset(sandbox, program, socket_dir, abi)?;
        report_kernel(
            Layer::LandlockFilesystem,
            format!("ABI {abi}; {paths} paths readable, sockets in its own directory"),
        )?;
        Some(ruleset)
    } else {
        report_kernel(Layer::LandlockFilesystem, String::new())?;
        None
    };
    report_kernel(Layer::LandlockNetwork, "no TCP bind or connect".into())?;
    report_kernel(
        Layer::LandlockScopes,
        "no abstract Unix sockets or signals outside its sandbox".into(),
    )?;

    let filters = if kernel.seccomp {
        let filters = seccomp_filters(sandbox.allow_processes)?;
        report_kernel(
            Layer::Seccomp,
            if sandbox.allow_processes {
                "system call filter (processes allowed)".into()
            } else {
                "system call filter (threads only)".into()
            },
        )?;
        filters
    } else {
        report_kernel(Layer::Seccomp, String::new())?;
        Vec::new()
    };

    Ok(Prepared {
        rlimits,
        close_fds: kernel.close_range,
        ruleset,
        filters,
        status,
    })
}

fn rlimits(limits: &ResourceLimits) -> Vec<(Resource, Rlimit)> {
    let fixed = |value: u64| Rlimit {
        current: Some(value),
        maximum: Some(value),
    };
    let mut all = Vec::new();
    if let Some(bytes) = limits.address_space {
        all.push((Resource::As, fixed(bytes)));
    }
    if let Some(files) = limits.open_files {
        all.push((Resource::Nofile, fixed(files)));
    }
    if let Some(bytes) = limits.file_size {
        all.push((Resource::Fsize, fixed(bytes)));
    }
    if let Some(count) = limits.processes {
        all.push((Resource::Nproc, fixed(count)));
    }
    if !limits.core_dumps {
        all.push((Resource::Core, fixed(0)));
    }
    all
}

fn describe_limits(limits: &ResourceLimits) -> String {
    let show = |value: Option<u64>| value.map_or_else(|| "inherited".to_owned(), |v| v.to_string());
    format!(
        "address space {}, open files {}, file size {}, processes {}, core dumps {}",
        show(limits.address_space),
        show(limits.open_files),
        show(limits.file_size),
        show(limits.processes),
        if limits.core_dumps { "on" } else { "off" }
    )
}

fn landlock_ruleset(
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

    let binaries = executable_closure(program).map_err(fail)?;
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

/// The files a dynamically linked `program` needs to start: itself and its loader (to
/// execute, `true`), its shared libraries and the loader's cache (to read, `false`).
/// Cached per program version, since a debug binary can be large.
fn executable_closure(program: &Path) -> Result<Vec<(PathBuf, bool)>, String> {
    type Key = (PathBuf, Option<SystemTime>, u64);
    type Files = Vec<(PathBuf, bool)>;
    static CACHE: OnceLock<Mutex<HashMap<Key, Files>>> = OnceLock::new();
    let program = std::fs::canonicalize(program).map_err(|err| {
        format!(
            "cannot resolve the plugin program {}: {err}",
            program.display()
        )
    })?;
    let metadata =
        std::fs::metadata(&program).map_err(|err| format!("{}: {err}", program.display()))?;
    let key = (program.clone(), metadata.modified().ok(), metadata.len());
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(found) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return Ok(found.clone());
    }

    let mut files: BTreeMap<PathBuf, bool> = BTreeMap::new();
    files.insert(program.clone(), true);
    let search = library_dirs();
    let mut queue = vec![program];
    let mut seen = BTreeSet::new();
    while let Some(object) = queue.pop() {
        if !seen.insert(object.clone()) {
            continue;
        }
        let bytes = std::fs::read(&object).map_err(|err| format!("{}: {err}", object.display()))?;
        if let Some(script) = bytes.strip_prefix(b"#!") {
            // A script: its interpreter runs it, so it needs the same.
            let line = script.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            if let Some(interpreter) = line.split_whitespace().next() {
                let interpreter = std::fs::canonicalize(interpreter)
                    .map_err(|err| format!("the script interpreter {interpreter}: {err}"))?;
                files.insert(interpreter.clone(), true);
                queue.push(interpreter);
            }
            continue;
        }
        let elf = match goblin::elf::Elf::parse(&bytes) {
            Ok(elf) => elf,
            // Neither ELF nor a script: the kernel will refuse to run it anyway.
            Err(_) => continue,
        };
        if let Some(interpreter) = elf.interpreter {
            let loader = std::fs::canonicalize(interpreter)
                .map_err(|err| format!("the loader {interpreter}: {err}"))?;
            files.insert(loader, true);
            if let Ok(cache) = std::fs::canonicalize("/etc/ld.so.cache") {
                files.entry(cache).or_insert(false);
            }
        }
        let origin = object.parent().unwrap_or(Path::new("/")).to_owned();
        let own: Vec<PathBuf> = elf
            .runpaths
            .iter()
            .chain(&elf.rpaths)
            .flat_map(|list| list.split(':'))
            .map(|dir| PathBuf::from(dir.replace("$ORIGIN", &origin.to_string_lossy())))
            .collect();
        for library in &elf.libraries {
            let found = own
                .iter()
                .chain(&search)
                .map(|dir| dir.join(library))
                .find(|candidate| candidate.is_file())
                .ok_or_else(|| {
                    format!(
                        "cannot find the shared library {library} needed by {}",
                        object.display()
                    )
                })?;
            let found = std::fs::canonicalize(&found)
                .map_err(|err| format!("{}: {err}", found.display()))?;
            files.entry(found.clone()).or_insert(false);
            queue.push(found);
        }
    }
    let files: Vec<(PathBuf, bool)> = files.into_iter().collect();
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, files.clone());
    Ok(files)
}

/// Where the loader looks for libraries: `/etc/ld.so.conf` (and what it includes), then the
/// default directories.
fn library_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    read_ld_conf(Path::new("/etc/ld.so.conf"), &mut dirs, 0);
    for default in ["/lib64", "/usr/lib64", "/lib", "/usr/lib"] {
        dirs.push(PathBuf::from(default));
    }
    dirs
}

fn read_ld_conf(path: &Path, dirs: &mut Vec<PathBuf>, depth: usize) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(pattern) = line.strip_prefix("include ") {
            if depth > 4 {
                continue;
            }
            // Only the `dir/*.conf` form is common; expand it by hand.
            let pattern = Path::new(pattern.trim());
            let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
                continue;
            };
            let suffix = name.to_string_lossy().trim_start_matches('*').to_owned();
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut included: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|p| p.to_string_lossy().ends_with(&suffix))
                .collect();
            included.sort();
            for file in included {
                read_ld_conf(&file, dirs, depth + 1);
            }
        } else if line.starts_with('/') {
            dirs.push(PathBuf::from(line));
        }
    }
}

/// The ioctl requests a plugin may make on any descriptor: none reaches a file's inode or
/// a device.
const ALLOWED_IOCTLS: [u64; 4] = [libc::FIONREAD, libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX];

/// Terminal queries, answered `ENOTTY` so `isatty` says no without a denial.
const TERMINAL_IOCTLS: [u64; 2] = [libc::TCGETS, libc::TIOCGWINSZ];

/// The prctl options a plugin may use: thread names, the parent-death signal, and reads.
const ALLOWED_PRCTLS: [libc::c_int; 7] = [
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_SET_PDEATHSIG,
    libc::PR_GET_PDEATHSIG,
    libc::PR_GET_DUMPABLE,
    libc::PR_GET_SECCOMP,
    // Installing the sandbox's later filters (a filter can only restrict further).
    libc::PR_SET_NO_NEW_PRIVS,
];

/// The fcntl commands a plugin may use: no signals to other processes (`F_SETOWN`,
/// `F_SETSIG`), no leases or directory notifications.
const ALLOWED_FCNTLS: [libc::c_int; 13] = [
    libc::F_DUPFD,
    libc::F_DUPFD_CLOEXEC,
    libc::F_GETFD,
    libc::F_SETFD,
    libc::F_GETFL,
    libc::F_SETFL,
    libc::F_GETLK,
    libc::F_SETLK,
    libc::F_SETLKW,
    libc::F_OFD_GETLK,
    libc::F_OFD_SETLK,
    libc::F_OFD_SETLKW,
    libc::F_GETPIPE_SZ,
];

/// The plugin's system call filter, as three programs applied in order:
/// 1. the allowlist ([`syscalls`]): what is listed is allowed (some calls only with
///    some arguments); everything else fails with `ENOSYS`, as on a kernel that lacks it,
///    so the C library and the Go runtime fall back cleanly (`clone3` to `clone`);
/// 2. refusals by name or argument, with `EPERM`: dangerous calls, sockets other than
///    `AF_UNIX`, ioctl requests, prctl options and fcntl commands off the list, clone flags
///    for namespaces or `CLONE_PARENT` (and, without processes, anything but a thread),
///    setting resource limits;
/// 3. terminal queries, with `ENOTTY`.
///
/// The kernel takes the strictest answer of all programs, and of two errors the later
/// program's, so a refusal by name reads `EPERM` although the allowlist says `ENOSYS`.
fn seccomp_filters(allow_processes: bool) -> Result<Vec<BpfProgram>, SandboxError> {
    let fail = |err: seccompiler::BackendError| SandboxError {
        layer: Layer::Seccomp,
        reason: err.to_string(),
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => TargetArch::x86_64,
        "aarch64" => TargetArch::aarch64,
        "riscv64" => TargetArch::riscv64,
        other => {
            return Err(SandboxError {
                layer: Layer::Seccomp,
                reason: format!("no seccomp filter for the {other} architecture"),
            });
        }
    };
    // Every value compared is a non-negative constant of the kernel's ABI.
    let value = |constant: i64| constant.unsigned_abs();
    let dword = |arg: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(fail)
    };
    let rule = |conditions: Vec<SeccompCondition>| SeccompRule::new(conditions).map_err(fail);
    let program = |rules: BTreeMap<i64, Vec<SeccompRule>>, otherwise, matched| {
        BpfProgram::try_from(SeccompFilter::new(rules, otherwise, matched, arch).map_err(fail)?)
            .map_err(fail)
    };
    let errno = |code: libc::c_int| SeccompAction::Errno(code.unsigned_abs());

    let unix = value(libc::AF_UNIX.into());
    let ioctls = ALLOWED_IOCTLS.map(|request| request & 0xffff_ffff);
    let terminal = TERMINAL_IOCTLS.map(|request| request & 0xffff_ffff);
    let prctls = ALLOWED_PRCTLS.map(|option| value(option.into()));
    let fcntls = ALLOWED_FCNTLS.map(|command| value(command.into()));
    let forbidden_clone = value(
        (libc::CLONE_NEWNS
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_PARENT)
            .into(),
    );
    let thread = value(libc::CLONE_THREAD.into());
    // prlimit64(pid, resource, new_limit, old_limit): reading only, a null new_limit.
    let no_new_limit =
        SeccompCondition::new(2, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 0).map_err(fail)?;
    let some_new_limit =
        SeccompCondition::new(2, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, 0).map_err(fail)?;

    // 1. The allowlist.
    let mut allowed: BTreeMap<i64, Vec<SeccompRule>> = syscalls::allowed_syscalls(allow_processes)
        .iter()
        .map(|call| (call.number, Vec::new()))
        .collect();
    for call in [libc::SYS_socket, libc::SYS_socketpair] {
        allowed.insert(call, vec![rule(vec![dword(0, SeccompCmpOp::Eq, unix)?])?]);
    }
    let one_of = |arg: u8, values: &[u64]| -> Result<Vec<SeccompRule>, SandboxError> {
        values
            .iter()
            .map(|&allowed| rule(vec![dword(arg, SeccompCmpOp::Eq, allowed)?]))
            .collect()
    };
    allowed.insert(libc::SYS_ioctl, one_of(1, &ioctls)?);
    allowed.insert(libc::SYS_prctl, one_of(0, &prctls)?);
    allowed.insert(libc::SYS_fcntl, one_of(1, &fcntls)?);
    let mut clone = vec![dword(0, SeccompCmpOp::MaskedEq(forbidden_clone), 0)?];
    if !allow_processes {
        clone.push(dword(0, SeccompCmpOp::MaskedEq(thread), thread)?);
    }
    allowed.insert(libc::SYS_clone, vec![rule(clone)?]);
    allowed.insert(libc::SYS_prlimit64, vec![rule(vec![no_new_limit])?]);

    // 2. Refusals with EPERM.
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = syscalls::refused_syscalls(allow_processes)
        .iter()
        .map(|call| (call.number, Vec::new()))
        .collect();
    for call in [libc::SYS_socket, libc::SYS_socketpair] {
        refused.insert(call, vec![rule(vec![dword(0, SeccompCmpOp::Ne, unix)?])?]);
    }
    let none_of = |arg: u8, values: &[u64]| -> Result<Vec<SeccompRule>, SandboxError> {
        let conditions = values
            .iter()
            .map(|&allowed| dword(arg, SeccompCmpOp::Ne, allowed))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![rule(conditions)?])
    };
    let answered = [ioctls.as_slice(), terminal.as_slice()].concat();
    refused.insert(libc::SYS_ioctl, none_of(1, &answered)?);
    refused.insert(libc::SYS_prctl, none_of(0, &prctls)?);
    refused.insert(libc::SYS_fcntl, none_of(1, &fcntls)?);
    // Alternatives: any forbidden flag; without processes, no CLONE_THREAD.
    let mut clone_refusals = Vec::new();
    let mut flags = forbidden_clone;
    while flags != 0 {
        let flag = flags & flags.wrapping_neg();
        flags &= !flag;
        clone_refusals.push(rule(vec![dword(0, SeccompCmpOp::MaskedEq(flag), flag)?])?);
    }
    if !allow_processes {
        clone_refusals.push(rule(vec![dword(0, SeccompCmpOp::MaskedEq(thread), 0)?])?);
    }
    refused.insert(libc::SYS_clone, clone_refusals);
    refused.insert(libc::SYS_prlimit64, vec![rule(vec![some_new_limit])?]);

    // 3. Terminal queries.
    let terminal_rules = BTreeMap::from([(libc::SYS_ioctl, one_of(1, &terminal)?)]);

    Ok(vec![
        program(allowed, errno(libc::ENOSYS), SeccompAction::Allow)?,
        program(refused, SeccompAction::Allow, errno(libc::EPERM))?,
        program(terminal_rules, SeccompAction::Allow, errno(libc::ENOTTY))?,
    ])
}

impl Prepared {
    /// Confines the calling process. Runs between fork and exec: raw system calls only on
    /// state built by [`prepare`]; no allocation, no lock.
    pub(crate) fn apply(&mut self) -> io::Result<()> {
        let os = |errno: rustix::io::Errno| io::Error::from_raw_os_error(errno.raw_os_error());
        for (resource, limit) in &self.rlimits {
            rustix::process::setrlimit(*resource, *limit).map_err(os)?;
        }
        if self.close_fds {
            // SAFETY: marks fds 3.. close-on-exec; std's own error pipe is already so.
            let result = unsafe {
                libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                )
            };
            if result != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(ruleset) = self.ruleset.take() {
            ruleset
                .restrict_self()
                .map_err(|_| io::Error::from_raw_os_error(libc::EPERM))?;
        }
        for filter in &self.filters {
            seccompiler::apply_filter(filter)
                .map_err(|_| io::Error::from_raw_os_error(libc::EPERM))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_needs_itself_its_loader_and_its_libraries() {
        let exe = std::env::current_exe().unwrap();
        let files = executable_closure(&exe).unwrap();
        let canonical = std::fs::canonicalize(&exe).unwrap();
        assert!(files.contains(&(canonical, true)), "{files:?}");
        // This test binary is dynamically linked against the C library.
        assert!(
            files
                .iter()
                .any(|(path, exec)| *exec && path.to_string_lossy().contains("ld-linux")),
            "no loader in {files:?}"
        );
        assert!(
            files
                .iter()
                .any(|(path, exec)| !*exec && path.to_string_lossy().contains("libc.so")),
            "no libc in {files:?}"
        );
    }

    #[test]
    fn a_script_needs_its_interpreter_and_the_interpreter_s_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("plugin.sh");
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        let files = executable_closure(&script).unwrap();
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert!(files.contains(&(sh, true)), "{files:?}");
        assert!(
            files
                .iter()
                .any(|(path, exec)| !*exec && path.to_string_lossy().contains("libc.so")),
            "{files:?}"
        );
    }

    #[test]
    fn programs_resolve_by_path_or_on_path_and_missing_ones_are_not_found() {
        let sh = resolve_program(Path::new("sh")).unwrap();
        assert!(sh.is_absolute() && sh.is_file(), "{sh:?}");
        let err = resolve_program(Path::new("/nonexistent/plugin")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = resolve_program(Path::new("tether-no-such-program")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = resolve_program(Path::new("/")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn off_enforces_nothing_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let prepared = prepare(&Sandbox::off(), &exe, dir.path()).unwrap();
        assert_eq!(prepared.status.layers.len(), Layer::ALL.len());
        assert!(prepared.status.layers.iter().all(|layer| !layer.enforced));
        assert!(prepared.filters.is_empty() && prepared.ruleset.is_none());
    }

    #[test]
    fn the_seccomp_filters_build_with_and_without_processes() {
        assert_eq!(seccomp_filters(false).unwrap().len(), 3);
        assert_eq!(seccomp_filters(true).unwrap().len(), 3);
    }

    #[test]
    fn no_system_call_is_both_allowed_and_refused() {
        for processes in [false, true] {
            let allowed: BTreeSet<i64> = syscalls::allowed_syscalls(processes)
                .iter()
                .chain(syscalls::CONDITIONAL)
                .map(|call| call.number)
                .collect();
            for call in syscalls::refused_syscalls(processes) {
                assert!(!allowed.contains(&call.number), "{} is both", call.name);
            }
        }
    }
}
