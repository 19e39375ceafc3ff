//! The loader closure: the files a dynamically linked program needs to start (itself,
//! its loader, its shared libraries, the loader's cache), found by walking its ELF headers
//! and `/etc/ld.so.conf`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

/// The files a dynamically linked `program` needs to start: itself and its loader (to
/// execute, `true`), its shared libraries and the loader's cache (to read, `false`).
/// Cached per program version, since a debug binary can be large.
pub(crate) fn executable_closure(program: &Path) -> Result<Vec<(PathBuf, bool)>, String> {
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
}
