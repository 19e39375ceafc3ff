//! Finding the executable a plugin is started from.

use std::io;
use std::path::{Path, PathBuf};

/// The executable `program` names: itself if it has a `/`, else the first match on the
/// host's `PATH` (as `execvp` would find it). The sandbox allows exactly this file.
pub fn resolve_program(program: &Path) -> io::Result<PathBuf> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
