//! Keeping the embedded store private to its owner.
//!
//! The store's root is the user's whole Shoal home, and its packs hold
//! every dataset the user imported or pinned, so nothing in it is for other
//! users of the machine. Every directory the store creates is made with
//! mode 0700 and every file with 0600 (`repo.sqlite` is created before
//! SQLite opens it, because SQLite gives its `-wal`, `-shm` and `-journal`
//! files the mode of the database file). A umask can only take bits away
//! from those modes, never add group or other ones.
//!
//! A store created by an older Shoal (0755 directories, 0644 files) is
//! tightened when it is opened: the root, `blocks/`, `blocks/packs/`, the
//! packs, the database files and `gc.lock` lose their group and other bits.
//! Nothing else in the home is touched. What was found open is listed in
//! `FsStore::tightened` so the caller can say so; a path that could not be tightened (another user owns it, or its
//! file system has no unix permissions) is listed with the error, and the
//! store is opened anyway: whether it can be used is up to the ordinary
//! permission checks of each operation, which name the path they fail on.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Mode of every directory the store creates.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file the store creates.
pub(crate) const FILE_MODE: u32 = 0o600;

/// A path of the store that other users could read, write or enter when
/// the store was opened (see [`FsStore::tightened`](super::FsStore::tightened)).
#[derive(Debug)]
pub struct Tightened {
    /// The directory or file.
    pub path: PathBuf,
    /// Its permission bits as found, e.g. `0o755`.
    pub old_mode: u32,
    /// `Ok`: its permission bits now, without the group and other ones
    /// (e.g. `0o700`). `Err`: they could not be changed and stay as found;
    /// the error ([`Error::NotPrivate`]) names the path and the `chmod` to
    /// run.
    pub new_mode: Result<u32>,
}

impl Tightened {
    /// Whether the path is private now.
    pub fn done(&self) -> bool {
        self.new_mode.is_ok()
    }
}

/// Creates `dir` and any missing parent with mode 0700.
pub(crate) fn create_dirs(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| Error::io("cannot create store directory", dir, e))
}

/// Removes the group and other bits of `path` (following symlinks) if it
/// has any, and records it in `out`. A path that does not exist is fine.
pub(crate) fn tighten(path: &Path, out: &mut Vec<Tightened>) {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return,
        Err(e) => {
            // Cannot even look: the store's own operations on it will fail
            // with an error naming it, if it matters.
            tracing::debug!(path = %path.display(), "cannot check a store path's mode: {e}");
            return;
        }
    };
    let old_mode = meta.mode() & 0o7777;
    if old_mode & 0o077 == 0 {
        return;
    }
    let want = old_mode & 0o700;
    let new_mode = match fs::set_permissions(path, fs::Permissions::from_mode(want)) {
        Ok(()) => Ok(want),
        Err(e) if e.kind() == ErrorKind::NotFound => return, // removed meanwhile (gc)
        Err(e) => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            let owner = (meta.uid() != me).then_some(meta.uid());
            tracing::debug!(path = %path.display(), "cannot make a store path private: {e}");
            Err(Error::NotPrivate { path: path.to_path_buf(), mode: old_mode, want, owner, source: e })
        }
    };
    out.push(Tightened { path: path.to_path_buf(), old_mode, new_mode });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_tighten_names_the_path_and_the_chmod_to_run() {
        let e = |owner| Error::NotPrivate {
            path: "/home/u/.shoal".into(),
            mode: 0o755,
            want: 0o700,
            owner,
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        };
        let mine = e(None).to_string();
        assert!(
            mine.starts_with(
                "/home/u/.shoal is open to other users (mode 0755) and cannot be made private: operation not permitted"
            ),
            "{mine}"
        );
        assert!(mine.ends_with("; run `chmod 700 /home/u/.shoal`, or move the shoal home to a file system with unix permissions (--home or SHOAL_HOME)"), "{mine}");
        let theirs = e(Some(1001)).to_string();
        assert!(
            theirs.contains("it belongs to user id 1001: have them (or root) run `chmod 700 /home/u/.shoal`"),
            "{theirs}"
        );
    }

    #[test]
    fn tighten_removes_group_and_other_bits_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"x").unwrap();
        let mut out = Vec::new();
        for (mode, want) in [(0o664, Some(0o600)), (0o400, None), (0o604, Some(0o600)), (0o600, None)] {
            fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
            out.clear();
            tighten(&f, &mut out);
            assert_eq!(out.first().map(|t| *t.new_mode.as_ref().unwrap()), want, "{mode:o}");
            assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, want.unwrap_or(mode));
        }
        tighten(&dir.path().join("absent"), &mut out);
        assert!(out.is_empty());
    }
}
