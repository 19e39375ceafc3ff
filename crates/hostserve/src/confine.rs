//! Reaching a requested path beneath the plugin's workspace through directory handles.
//!
//! Every component is opened relative to the handle of the one before it (`cap_std`), and
//! no symbolic link is ever followed (`O_NOFOLLOW` on each step and on the target), so the
//! object reached is exactly the one the lexical path names: the grant that matched the
//! path is the grant for the object. A link, or a directory swapped for a link while the
//! walk runs, ends the walk with an error; it can never lead outside.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, File, Metadata, OpenOptions, OpenOptionsExt};
use rustix::fs::OFlags;

use crate::path::{RESERVED_PREFIX, RequestPath};

/// The directory that holds the requested object, and the object's name in it.
pub(crate) struct Target {
    parent: Dir,
    name: String,
}

fn nofollow(options: &mut OpenOptions, extra: OFlags) -> &mut OpenOptions {
    // The flags are small positive constants; the cast cannot change their bits.
    #[allow(clippy::cast_possible_wrap, reason = "open(2) flags fit in an i32")]
    let flags = (OFlags::NOFOLLOW | OFlags::CLOEXEC | extra).bits() as i32;
    options.custom_flags(flags)
}

fn not_a_regular_file() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "not a regular file (a FIFO, socket or device): host services read regular files only",
    )
}

fn open_dir_in(dir: &Dir, name: &str) -> io::Result<Dir> {
    match dir.open_with(
        name,
        nofollow(OpenOptions::new().read(true), OFlags::DIRECTORY),
    ) {
        Ok(file) => Ok(Dir::from_std_file(file.into_std())),
        // With O_DIRECTORY, a symlink is reported as "not a directory"; say what it is.
        Err(err)
            if err.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
                && dir
                    .symlink_metadata(name)
                    .is_ok_and(|meta| meta.file_type().is_symlink()) =>
        {
            Err(rustix::io::Errno::LOOP.into())
        }
        Err(err) => Err(err),
    }
}

impl Target {
    /// Walks from the workspace to the directory holding `path`'s last component.
    pub(crate) fn locate(workspace: &Path, path: &RequestPath) -> io::Result<Self> {
        let mut dir = Dir::open_ambient_dir(workspace, ambient_authority())?;
        let mut components = path.components().peekable();
        let mut name = "";
        while let Some(component) = components.next() {
            if components.peek().is_none() {
                name = component;
            } else {
                dir = open_dir_in(&dir, component)?;
            }
        }
        Ok(Target {
            parent: dir,
            name: name.to_owned(),
        })
    }

    /// Opens the target as a directory.
    pub(crate) fn open_dir(&self) -> io::Result<Dir> {
        open_dir_in(&self.parent, &self.name)
    }

    /// Opens the target, a regular file, for reading. Anything else is refused without
    /// waiting: opening a FIFO would block until a writer comes, a socket fails with
    /// `ENXIO`, and opening a device may act on it. The target is checked before the open,
    /// opened with `O_NONBLOCK` (so one swapped in meanwhile cannot block it either) and
    /// checked again on the descriptor; then reads block as usual. Unless `hard_links`, a
    /// file with more than one hard link is refused too: its other names may lie outside
    /// every grant.
    pub(crate) fn open_file(&self, hard_links: bool) -> io::Result<File> {
        let found = self.stat()?.file_type();
        if found.is_symlink() {
            return Err(rustix::io::Errno::LOOP.into());
        }
        if !found.is_file() {
            return Err(not_a_regular_file());
        }
        let file = self
            .parent
            .open_with(
                &self.name,
                nofollow(OpenOptions::new().read(true), OFlags::NONBLOCK),
            )
            .map_err(|err| {
                if err.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) {
                    not_a_regular_file()
                } else {
                    err
                }
            })?;
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(not_a_regular_file());
        }
        let links = cap_std::fs::MetadataExt::nlink(&metadata);
        if links > 1 && !hard_links {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "has {links} hard links, and another name of the same file may lie outside \
                     every grant; the host reads such files only with Limits::allow_hard_links"
                ),
            ));
        }
        let flags = rustix::fs::fcntl_getfl(&file)?;
        rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)?;
        Ok(file)
    }

    /// Describes the target without following it.
    pub(crate) fn stat(&self) -> io::Result<Metadata> {
        self.parent.symlink_metadata(&self.name)
    }

    /// Deletes the target, which must not be a directory.
    pub(crate) fn remove_file(&self) -> io::Result<()> {
        if self.stat()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a directory; DeleteFile deletes files",
            ));
        }
        self.parent.remove_file(&self.name)
    }

    /// Creates the target as a directory (mode `0o755`, less the umask); its parent must
    /// exist, and the target must not (`mkdirat` never follows a link there either).
    pub(crate) fn create_dir(&self) -> io::Result<()> {
        self.parent.create_dir(&self.name)
    }

    /// Creates a fresh temporary file next to the target, with `mode`, named
    /// [`RESERVED_PREFIX`]`<pid>-<sequence>`: a reserved name that no request may name, that
    /// `ReadDir` never lists, and that [`sweep`] removes once its writer is gone.
    pub(crate) fn create_temp(&self, mode: u32) -> io::Result<(String, File)> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        for _ in 0..16u32 {
            let temp = format!(
                "{RESERVED_PREFIX}{}-{}",
                std::process::id(),
                SEQUENCE.fetch_add(1, Ordering::Relaxed)
            );
            let mut options = OpenOptions::new();
            options.write(true).create_new(true).mode(mode);
            match self
                .parent
                .open_with(&temp, nofollow(&mut options, OFlags::empty()))
            {
                Ok(file) => return Ok((temp, file)),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "could not find a free temporary name",
        ))
    }

    /// Renames the finished temporary file over the target.
    pub(crate) fn commit(&self, temp: &str) -> io::Result<()> {
        self.parent.rename(temp, &self.parent, &self.name)
    }

    /// Removes an abandoned temporary file.
    pub(crate) fn discard(&self, temp: &str) {
        let _ = self.parent.remove_file(temp);
    }
}

/// What [`sweep`] did to a workspace.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Leftover temporary files removed.
    pub(crate) removed: u64,
    /// Temporary files kept because the process that writes them is still running.
    pub(crate) kept: u64,
}

/// The pid that wrote the temporary file `name` (`RESERVED_PREFIX<pid>-<sequence>`), if
/// `name` is one.
fn temp_writer(name: &str) -> Option<u32> {
    let (pid, sequence) = name.strip_prefix(RESERVED_PREFIX)?.split_once('-')?;
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(sequence))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Whether process `pid` still runs (in this pid namespace).
fn is_running(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes, everywhere beneath `workspace`, the temporary files of writes that can never
/// finish: those whose writing process is gone (a host killed in the middle of a
/// `WriteFile`). Follows no link; files of a running writer (this process included) are
/// kept. Errors on single entries are skipped: a sweep never stops the host services.
pub(crate) fn sweep(workspace: &Path) -> io::Result<Swept> {
    let root = Dir::open_ambient_dir(workspace, ambient_authority())?;
    let mut swept = Swept::default();
    // Directories still to visit, as component lists from the root: one handle is open at
    // a time, however wide or deep the workspace.
    let mut pending: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(components) = pending.pop() {
        let opened = components.iter().try_fold(None::<Dir>, |dir, component| {
            open_dir_in(dir.as_ref().unwrap_or(&root), component).map(Some)
        });
        let Ok(opened) = opened else {
            continue;
        };
        let dir = opened.as_ref().unwrap_or(&root);
        let Ok(entries) = dir.entries() else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if file_type.is_dir() {
                let mut sub = components.clone();
                sub.push(name.to_owned());
                pending.push(sub);
            } else if file_type.is_file()
                && let Some(pid) = temp_writer(name)
            {
                if is_running(pid) {
                    swept.kept += 1;
                } else if dir.remove_file(name).is_ok() {
                    swept.removed += 1;
                }
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_recognised_exactly() {
        assert_eq!(temp_writer(".tether-partial-123-0"), Some(123));
        for other in [
            ".tether-partial-123",
            ".tether-partial--0",
            ".tether-partial-12a-0",
            ".tether-partial-123-0.tmp",
            "tether-partial-123-0",
            ".report.txt.tether-123-0.tmp",
        ] {
            assert_eq!(temp_writer(other), None, "{other}");
        }
    }
}
