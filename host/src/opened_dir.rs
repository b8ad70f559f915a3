//! Directories granted to guests, opened once without following a symbolic link and
//! then held by handle.
//!
//! A guest with a writable grant can plant a symlink (`sub -> ../../..`) inside it. The
//! guest itself cannot follow it (WASI resolves its paths beneath the preopen), but a
//! host that opens grant paths again by name would: every later instance, apply and
//! restart would then grant whatever the link points at. So the host resolves a grant's
//! path exactly once, component by component with `O_NOFOLLOW` (a symlink anywhere in the
//! path is refused), keeps the directory's handle, and gives each instance a duplicate of
//! that handle. A rename or a planted link after that changes nothing the host grants.
//! The directory's identity (device, inode) lets a restarted daemon check that a path
//! still names the directory that was granted.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which directory a path named when it was granted: its device, inode and birth
/// time. The birth time tells a directory deleted and made again (file systems reuse
/// inode numbers at once) from the one granted; it is 0 where the file system does not
/// record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirIdentity {
    /// The device (`st_dev`).
    pub device: u64,
    /// The inode (`st_ino`).
    pub inode: u64,
    /// Birth time in nanoseconds since the Unix epoch (`statx` `btime`), 0 if unknown.
    #[serde(default)]
    pub born_ns: u64,
}

impl DirIdentity {
    /// Whether both name the same directory: same device and inode, and the same birth
    /// time where both know it.
    pub fn same_as(&self, other: &Self) -> bool {
        self.device == other.device
            && self.inode == other.inode
            && (self.born_ns == other.born_ns || self.born_ns == 0 || other.born_ns == 0)
    }
}

impl std::fmt::Display for DirIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device {} inode {}", self.device, self.inode)?;
        if self.born_ns != 0 {
            write!(
                f,
                " born {}.{:09}",
                self.born_ns / 1_000_000_000,
                self.born_ns % 1_000_000_000
            )?;
        }
        Ok(())
    }
}

/// Why a directory could not be opened for a grant.
#[derive(Debug, thiserror::Error)]
pub enum OpenDirError {
    /// The path is not absolute.
    #[error("`{0}` is not an absolute path")]
    NotAbsolute(PathBuf),
    /// A component of the path is a symbolic link.
    #[error(
        "`{link}` is a symbolic link; a granted path may not contain one (it could be replaced to point anywhere)"
    )]
    Symlink {
        /// The path up to and including the link.
        link: PathBuf,
    },
    /// A component of the path is not a directory.
    #[error("`{0}` is not a directory")]
    NotDirectory(PathBuf),
    /// The path does not exist.
    #[error("directory `{0}` not found")]
    NotFound(PathBuf),
    /// Any other failure of the OS.
    #[error("cannot open `{path}`: {source}")]
    Io {
        /// The path up to the component that failed.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The handle cannot be passed on to instances on this system.
    #[error("cannot hand `{path}` to instances by handle: {why}")]
    NoHandlePath {
        /// The directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Directory grants need a Unix host.
    #[error("directory grants are supported on Unix hosts only")]
    Unsupported,
}

/// The lexical normal form of an absolute path: `.` dropped, `..` applied, no trailing
/// slash. `None` if the path is relative or climbs above `/`.
pub fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut depth = 0usize;
    for component in path.components() {
        match component {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return None;
                }
                out.pop();
                depth -= 1;
            }
            Component::Normal(part) => {
                out.push(part);
                depth += 1;
            }
            Component::Prefix(_) => return None,
        }
    }
    out.has_root().then_some(out)
}

/// Whether one of two normalized paths lies strictly inside the other.
pub fn nested(a: &Path, b: &Path) -> bool {
    a != b && (a.starts_with(b) || b.starts_with(a))
}

/// A directory held open for granting, with the identity it had when opened.
#[derive(Debug)]
pub struct OpenedDir {
    path: PathBuf,
    identity: DirIdentity,
    #[cfg(unix)]
    fd: std::os::fd::OwnedFd,
}

impl OpenedDir {
    /// Opens the absolute `path`, refusing a symbolic link in any of its components.
    pub fn open(path: &Path) -> Result<Self, OpenDirError> {
        let normal = normalize(path).ok_or_else(|| OpenDirError::NotAbsolute(path.into()))?;
        imp::open(&normal)
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its identity when opened.
    pub fn identity(&self) -> DirIdentity {
        self.identity
    }

    /// A path that opens this very directory (not whatever its name means now): the
    /// handle's entry in `/proc/self/fd` (Linux) or `/dev/fd`. Valid while `self` lives.
    pub fn handle_path(&self) -> PathBuf {
        imp::handle_path(self)
    }
}

#[cfg(unix)]
mod imp {
    use std::ffi::OsStr;
    use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    use std::path::{Component, Path, PathBuf};

    use rustix::fs::{AtFlags, CWD, Mode, OFlags, openat, statat};
    use rustix::io::Errno;

    use super::{DirIdentity, OpenDirError, OpenedDir};

    /// Intermediate components need only be searchable, not readable.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const WALK: OFlags = OFlags::PATH;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const WALK: OFlags = OFlags::RDONLY;

    // `st_dev` and `st_ino` are u64 on Linux, other widths elsewhere.
    #[allow(clippy::unnecessary_cast)]
    pub(super) fn open(path: &Path) -> Result<OpenedDir, OpenDirError> {
        let mut so_far = PathBuf::from("/");
        let io = |path: &Path, e: Errno| OpenDirError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        };
        let mut fd: OwnedFd = openat(
            CWD,
            "/",
            WALK | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(&so_far, e))?;
        let parts: Vec<&OsStr> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p),
                _ => None,
            })
            .collect();
        for (i, part) in parts.iter().enumerate() {
            so_far.push(part);
            let last = i + 1 == parts.len();
            let mode = if last { OFlags::RDONLY } else { WALK };
            match openat(
                fd.as_fd(),
                part.as_bytes(),
                mode | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(next) => fd = next,
                Err(e) => return Err(classify(&fd, part, &so_far, e)),
            }
        }
        if parts.is_empty() {
            fd = openat(
                CWD,
                "/",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io(&so_far, e))?;
        }
        let stat = rustix::fs::fstat(&fd).map_err(|e| io(path, e))?;
        let opened = OpenedDir {
            path: path.to_path_buf(),
            identity: DirIdentity {
                device: stat.st_dev as u64,
                inode: stat.st_ino as u64,
                born_ns: born_ns(&fd),
            },
            fd,
        };
        // The handle path must lead back to this directory, or instances would be
        // granted something else (or nothing).
        match rustix::fs::stat(handle_path(&opened)) {
            Ok(s)
                if s.st_dev as u64 == opened.identity.device
                    && s.st_ino as u64 == opened.identity.inode =>
            {
                Ok(opened)
            }
            Ok(_) => Err(OpenDirError::NoHandlePath {
                path: path.to_path_buf(),
                why: "the handle's path names another directory".into(),
            }),
            Err(e) => Err(OpenDirError::NoHandlePath {
                path: path.to_path_buf(),
                why: format!(
                    "{} is not available ({e}); is /proc mounted?",
                    handle_path(&opened).display()
                ),
            }),
        }
    }

    /// The directory's birth time in nanoseconds, 0 where it is not known.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn born_ns(fd: &OwnedFd) -> u64 {
        use rustix::fs::{StatxFlags, statx};
        match statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BTIME) {
            Ok(x) if StatxFlags::from_bits_retain(x.stx_mask).contains(StatxFlags::BTIME) => {
                let secs = u64::try_from(x.stx_btime.tv_sec).unwrap_or(0);
                secs.saturating_mul(1_000_000_000)
                    .saturating_add(u64::from(x.stx_btime.tv_nsec))
            }
            _ => 0,
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn born_ns(_fd: &OwnedFd) -> u64 {
        0
    }

    /// Names the failure of opening `part` beneath `parent`.
    fn classify(parent: &OwnedFd, part: &OsStr, so_far: &Path, e: Errno) -> OpenDirError {
        if let Ok(stat) = statat(parent, part.as_bytes(), AtFlags::SYMLINK_NOFOLLOW) {
            let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
            if kind == rustix::fs::FileType::Symlink {
                return OpenDirError::Symlink {
                    link: so_far.to_path_buf(),
                };
            }
            if kind != rustix::fs::FileType::Directory {
                return OpenDirError::NotDirectory(so_far.to_path_buf());
            }
        }
        match e {
            Errno::NOENT => OpenDirError::NotFound(so_far.to_path_buf()),
            Errno::NOTDIR => OpenDirError::NotDirectory(so_far.to_path_buf()),
            e => OpenDirError::Io {
                path: so_far.to_path_buf(),
                source: e.into(),
            },
        }
    }

    pub(super) fn handle_path(dir: &OpenedDir) -> PathBuf {
        let fd = dir.fd.as_raw_fd();
        if cfg!(any(target_os = "linux", target_os = "android")) {
            PathBuf::from(format!("/proc/self/fd/{fd}"))
        } else {
            PathBuf::from(format!("/dev/fd/{fd}"))
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use std::path::{Path, PathBuf};

    use super::{OpenDirError, OpenedDir};

    pub(super) fn open(_path: &Path) -> Result<OpenedDir, OpenDirError> {
        Err(OpenDirError::Unsupported)
    }

    pub(super) fn handle_path(dir: &OpenedDir) -> PathBuf {
        dir.path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_applies_dots_and_refuses_climbing_above_root() {
        assert_eq!(
            normalize(Path::new("/a/./b/../c/")),
            Some(PathBuf::from("/a/c"))
        );
        assert_eq!(normalize(Path::new("/")), Some(PathBuf::from("/")));
        assert_eq!(normalize(Path::new("/..")), None);
        assert_eq!(normalize(Path::new("a/b")), None);
    }

    #[test]
    fn nested_compares_whole_components() {
        assert!(nested(Path::new("/s"), Path::new("/s/sub")));
        assert!(nested(Path::new("/s/sub"), Path::new("/s")));
        assert!(!nested(Path::new("/s"), Path::new("/s")));
        assert!(!nested(Path::new("/s"), Path::new("/sub")));
        assert!(!nested(Path::new("/data1"), Path::new("/data")));
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_anywhere_in_the_path_is_refused_and_the_handle_outlives_a_rename() {
        let root = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(root.path()).unwrap();
        std::fs::create_dir_all(base.join("real/inner")).unwrap();
        std::os::unix::fs::symlink("real", base.join("link")).unwrap();
        let err = OpenedDir::open(&base.join("link/inner")).unwrap_err();
        assert!(
            matches!(&err, OpenDirError::Symlink { link } if *link == base.join("link")),
            "{err}"
        );
        assert!(matches!(
            OpenedDir::open(&base.join("link")).unwrap_err(),
            OpenDirError::Symlink { .. }
        ));
        assert!(matches!(
            OpenedDir::open(&base.join("nothing")).unwrap_err(),
            OpenDirError::NotFound(_)
        ));
        let opened = OpenedDir::open(&base.join("real/inner")).unwrap();
        std::fs::write(base.join("real/inner/marker"), "original").unwrap();
        // The directory is moved away and a link to elsewhere takes its name: the handle
        // still opens the original.
        std::fs::rename(base.join("real/inner"), base.join("moved")).unwrap();
        std::fs::create_dir(base.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink("../elsewhere", base.join("real/inner")).unwrap();
        let marker = std::fs::read_to_string(opened.handle_path().join("marker")).unwrap();
        assert_eq!(marker, "original");
        assert!(matches!(
            OpenedDir::open(&base.join("real/inner")).unwrap_err(),
            OpenDirError::Symlink { .. }
        ));
    }
}
