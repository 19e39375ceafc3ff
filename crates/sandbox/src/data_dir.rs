//! A plugin's private data directory: created and checked by the host, then granted
//! read-write to that plugin alone by the Landlock ruleset.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A private directory in which one plugin may keep state: created (mode `0700`, with its
/// missing parents) or checked by [`DataDir::create`], and held open, so that what the
/// sandbox grants is the directory that was checked even if its path is swapped later.
///
/// The host grants it read-write beneath (create, write, rename and remove files and
/// directories; never execute), makes it the plugin's working directory, and names it in
/// the plugin's environment (`TETHER_DATA_DIR`). Every file written there is bounded by
/// [`ResourceLimits::file_size`](crate::ResourceLimits::file_size); their number and total
/// size are not (give the directory its own filesystem or a quota if that matters).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    dir: File,
}

/// Why a data directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory (or one of its parents) could not be created, opened or examined.
    #[error("could not create or open the plugin data directory {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The path is a symbolic link: the plugin would write wherever it points.
    #[error(
        "the plugin data directory {} is a symbolic link; give the real directory's path",
        path.display()
    )]
    Symlink {
        /// The directory.
        path: PathBuf,
    },
    /// Something other than a directory is at the path.
    #[error(
        "the plugin data directory {} exists and is not a directory; remove it or choose another path",
        path.display()
    )]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The directory belongs to another user, who could read or change the plugin's state.
    #[error(
        "the plugin data directory {} belongs to uid {owner}, not to the host's uid {host}; \
         chown it to the host's user or choose another path",
        path.display()
    )]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The host's effective uid.
        host: u32,
    },
    /// The directory is writable by its group or by others, who could change the plugin's
    /// state (or plant files in it).
    #[error(
        "the plugin data directory {} has mode {mode:o}, writable by group or others; \
         `chmod go-w` it (tether creates it 0700)",
        path.display()
    )]
    WritableByOthers {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path changed between the check and the open (another process is racing the host).
    #[error(
        "the plugin data directory {} changed while the host checked it; try again",
        path.display()
    )]
    Changed {
        /// The directory.
        path: PathBuf,
    },
}

impl DataDir {
    /// Creates `path` (mode `0700`, its missing parents too) unless it exists, then checks
    /// it: a directory, not a symbolic link, owned by the host's effective user, and not
    /// writable by group or others. A relative `path` is taken from the host's working
    /// directory.
    pub fn create(path: impl AsRef<Path>) -> Result<DataDir, DataDirError> {
        let path = path.as_ref();
        let io = |source: io::Error| DataDirError::Io {
            path: path.to_owned(),
            source,
        };
        let path = std::path::absolute(path).map_err(io)?;
        let io = |source: io::Error| DataDirError::Io {
            path: path.clone(),
            source,
        };
        if std::fs::symlink_metadata(&path).is_err() {
            // Absent (or unreachable, which the checks below report): an existing
            // directory is fine, what exists otherwise is refused below.
            match DirBuilder::new().recursive(true).mode(0o700).create(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(io(err)),
            }
        }
        let checked = std::fs::symlink_metadata(&path).map_err(io)?;
        if checked.file_type().is_symlink() {
            return Err(DataDirError::Symlink { path });
        }
        if !checked.is_dir() {
            return Err(DataDirError::NotADirectory { path });
        }
        let host = rustix::process::geteuid().as_raw();
        if checked.uid() != host {
            return Err(DataDirError::NotOwned {
                owner: checked.uid(),
                host,
                path,
            });
        }
        let mode = checked.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(DataDirError::WritableByOthers { path, mode });
        }
        // Opened after the check (close-on-exec): if the path now names something else,
        // refuse rather than grant it.
        let dir = File::open(&path).map_err(io)?;
        let opened = dir.metadata().map_err(io)?;
        if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
            return Err(DataDirError::Changed { path });
        }
        Ok(DataDir { path, dir })
    }

    /// The directory's absolute path, as the plugin is told it.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for DataDir {
    /// The directory that was checked, open (the Landlock rule is bound to it).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_missing_directory_is_created_private_with_its_parents() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("a/b/plugin");
        let dir = DataDir::create(&path).unwrap();
        assert_eq!(dir.path(), path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Again: an existing private directory is accepted as it is.
        std::fs::write(path.join("state"), "kept").unwrap();
        let again = DataDir::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path().join("state")).unwrap(),
            "kept"
        );
    }

    #[test]
    fn a_relative_path_is_made_absolute() {
        let dir = DataDir::create("target-data-dir-test").unwrap();
        assert!(dir.path().is_absolute(), "{}", dir.path().display());
        assert!(dir.path().ends_with("target-data-dir-test"));
        std::fs::remove_dir(dir.path()).unwrap();
    }

    #[test]
    fn symlinks_files_and_shared_directories_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = DataDir::create(&link).unwrap_err();
        assert!(matches!(err, DataDirError::Symlink { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");

        let file = base.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = DataDir::create(&file).unwrap_err();
        assert!(matches!(err, DataDirError::NotADirectory { .. }), "{err}");

        for mode in [0o777, 0o770, 0o702] {
            std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = DataDir::create(&real).unwrap_err();
            assert!(
                matches!(err, DataDirError::WritableByOthers { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("go-w"), "{err}");
        }
        // Readable by others is the operator's choice.
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        DataDir::create(&real).unwrap();
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        let me = rustix::process::geteuid().as_raw();
        let base = tempfile::tempdir().unwrap();
        // Root can give a directory away; anyone else finds one of root's.
        let theirs = if me == 0 {
            let dir = base.path().join("theirs");
            std::fs::create_dir(&dir).unwrap();
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            dir
        } else {
            PathBuf::from("/")
        };
        let owner = std::fs::metadata(&theirs).unwrap().uid();
        let err = DataDir::create(&theirs).unwrap_err();
        assert!(
            matches!(err, DataDirError::NotOwned { owner: o, host, .. } if o == owner && host == me),
            "{err}"
        );
        assert!(err.to_string().contains("chown"), "{err}");
    }
}
