//! What a sandbox is asked to do ([`Sandbox`]), what it did ([`SandboxStatus`]), and what
//! the running kernel offers ([`KernelSupport`]).

use std::fmt;
use std::path::PathBuf;

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
    pub(crate) mode: SandboxMode,
    pub(crate) limits: ResourceLimits,
    pub(crate) allow_processes: bool,
    pub(crate) socket_dir_files: bool,
    pub(crate) read_paths: Vec<PathBuf>,
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
        crate::platform::probe()
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
