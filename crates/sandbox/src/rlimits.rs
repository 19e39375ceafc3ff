//! Resource limits (`setrlimit`).

use rustix::process::{Resource, Rlimit};

use crate::ResourceLimits;

/// The limits to set, as `setrlimit` takes them.
pub(crate) fn rlimits(limits: &ResourceLimits) -> Vec<(Resource, Rlimit)> {
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

/// The limits in words, for the sandbox status.
pub(crate) fn describe(limits: &ResourceLimits) -> String {
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
