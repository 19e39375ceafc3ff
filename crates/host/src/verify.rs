//! Verified plugin binaries ([`PluginBuilder::sha256`](crate::PluginBuilder::sha256)): the
//! host opens the binary once, checks who may write it, hashes that open file, and
//! executes that same open file, so a rename or a replacement of the path between the check
//! and the exec changes nothing.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::str::FromStr;

use rustix::fs::{FileType, Mode, OFlags};

/// A SHA-256 digest, as `sha256sum` prints it: 64 hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256([u8; 32]);

/// Why a text is not a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a SHA-256 digest: {reason}; write the 64 hexadecimal digits `sha256sum` \
     prints for the binary"
)]
pub struct DigestError {
    /// The text, as given (its first 100 characters).
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256 {
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        context.update(bytes);
        Sha256::from_digest(context.finish())
    }

    /// The digest of everything `reader` gives.
    pub fn of_reader(mut reader: impl Read) -> io::Result<Sha256> {
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buffer = vec![0u8; 256 << 10];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => context.update(&buffer[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(Sha256::from_digest(context.finish()))
    }

    /// The digest of the file at `path` (what an operator pins).
    pub fn of_file(path: &Path) -> io::Result<Sha256> {
        Sha256::of_reader(std::fs::File::open(path)?)
    }

    /// Its 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn from_digest(digest: aws_lc_rs::digest::Digest) -> Sha256 {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Sha256(bytes)
    }
}

impl FromStr for Sha256 {
    type Err = DigestError;

    /// 64 hexadecimal digits, either case; an optional `sha256:` prefix.
    fn from_str(text: &str) -> Result<Sha256, DigestError> {
        let error = |reason: String| DigestError {
            text: text.chars().take(100).collect(),
            reason,
        };
        let hex = text.trim();
        let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
        if hex.len() != 64 {
            return Err(error(format!(
                "it has {} characters, not 64",
                hex.chars().count()
            )));
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(high), Some(low)) => bytes[i] = (high * 16 + low) as u8,
                _ => {
                    return Err(error(format!(
                        "{:?} at position {} is not a hexadecimal digit",
                        String::from_utf8_lossy(pair),
                        2 * i + 1
                    )));
                }
            }
        }
        Ok(Sha256(bytes))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

/// Why a pinned binary was not started.
#[derive(Debug, thiserror::Error)]
pub enum BinaryRefusal {
    /// The binary could not be opened or read.
    #[error("could not read it: {0}")]
    Read(#[source] io::Error),
    /// Not a regular file.
    #[error("it is not a regular file")]
    NotAFile,
    /// Someone other than the host's user (or root) could rewrite it in place.
    #[error(
        "it is {who}, so it could be rewritten in place after the check; make it owned by \
         root or the host's user and not writable by group or others (`chmod go-w`)"
    )]
    Writable {
        /// Who could write it, in words.
        who: String,
    },
    /// What vouches for the binary (a signed manifest,
    /// [`PluginBuilder::sha256_from`](crate::PluginBuilder::sha256_from)) does not.
    #[error("{0}")]
    NotVouched(String),
    /// Its digest is not the pinned one.
    #[error(
        "its SHA-256 is {actual}, but {expected} is pinned; if the new binary is trusted, pin \
         its digest (`sha256sum`)"
    )]
    Mismatch {
        /// The pinned digest.
        expected: Sha256,
        /// The binary's.
        actual: Sha256,
    },
}

/// Gives, at each start, the SHA-256 the binary at a path must have (for example, from a
/// signed manifest), or says why none can be trusted.
pub type DigestSource = std::sync::Arc<dyn Fn(&Path) -> Result<Sha256, String> + Send + Sync>;

/// The binary at `program`, opened once (close-on-exec), checked and hashed: the open file
/// to execute, if its digest is `expected`.
pub(crate) fn open_verified(program: &Path, expected: &Sha256) -> Result<OwnedFd, BinaryRefusal> {
    let os = |errno: rustix::io::Errno| BinaryRefusal::Read(io::Error::from(errno));
    let file = rustix::fs::open(
        program,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(os)?;
    let stat = rustix::fs::fstat(&file).map_err(os)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(BinaryRefusal::NotAFile);
    }
    let host = rustix::process::geteuid().as_raw();
    let mode = stat.st_mode;
    let who = if stat.st_uid != 0 && stat.st_uid != host {
        Some(format!("owned by uid {}", stat.st_uid))
    } else if mode & 0o002 != 0 {
        Some(format!("writable by others (mode {:o})", mode & 0o7777))
    } else if mode & 0o020 != 0 {
        Some(format!("writable by its group (mode {:o})", mode & 0o7777))
    } else {
        None
    };
    if let Some(who) = who {
        return Err(BinaryRefusal::Writable { who });
    }
    // Hashed through the very descriptor that will be executed (exec ignores its offset).
    let mut reader = std::fs::File::from(file);
    let actual = Sha256::of_reader(&mut reader).map_err(BinaryRefusal::Read)?;
    let file = OwnedFd::from(reader);
    if actual != *expected {
        return Err(BinaryRefusal::Mismatch {
            expected: *expected,
            actual,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn digests_parse_print_and_refuse_what_is_not_one() {
        let digest = Sha256::of(b"abc");
        let text = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(digest.to_string(), text);
        assert_eq!(text.parse::<Sha256>(), Ok(digest));
        assert_eq!(text.to_uppercase().parse::<Sha256>(), Ok(digest));
        assert_eq!(format!("sha256:{text}").parse::<Sha256>(), Ok(digest));
        let short = "abc".parse::<Sha256>().expect_err("too short");
        assert!(
            short.to_string().contains("3 characters, not 64"),
            "{short}"
        );
        let bad = format!("{}zz", &text[..62])
            .parse::<Sha256>()
            .expect_err("not hex");
        assert!(bad.to_string().contains("position 63"), "{bad}");
    }

    #[test]
    fn the_open_file_is_checked_and_hashed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("plugin");
        std::fs::write(&path, b"binary").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let pinned = Sha256::of(b"binary");
        assert!(open_verified(&path, &pinned).is_ok());

        let other = Sha256::of(b"other");
        match open_verified(&path, &other) {
            Err(BinaryRefusal::Mismatch { expected, actual }) => {
                assert_eq!((expected, actual), (other, pinned));
            }
            wrong => panic!("expected a mismatch, got {wrong:?}"),
        }

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o775)).expect("chmod");
        let refused = open_verified(&path, &pinned).expect_err("group-writable");
        assert!(
            refused.to_string().contains("writable by its group"),
            "{refused}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o757)).expect("chmod");
        let refused = open_verified(&path, &pinned).expect_err("world-writable");
        assert!(
            refused.to_string().contains("writable by others"),
            "{refused}"
        );

        let refused = open_verified(dir.path(), &pinned).expect_err("a directory");
        assert!(matches!(refused, BinaryRefusal::NotAFile), "{refused}");
        let refused = open_verified(&dir.path().join("missing"), &pinned).expect_err("missing");
        assert!(matches!(refused, BinaryRefusal::Read(_)), "{refused}");
    }
}
