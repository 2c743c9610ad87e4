//! Turning [`Mount`]s into WASI preopens.
//!
//! Path traversal is refused at two levels: guest paths are validated here,
//! and inside a mount wasmtime-wasi resolves every guest path with cap-std,
//! which refuses `..` past the mount root, absolute paths and symlinks that
//! lead outside it.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use tempfile::TempDir;

use crate::{Error, Mount};

/// The guest path of the writable outputs directory.
pub(crate) const OUTPUTS_GUEST_PATH: &str = "/outputs";

/// Preopens ready to hand to WASI, plus the staging directories that must
/// outlive the job.
#[derive(Debug, Default)]
pub(crate) struct Staged {
    pub(crate) dirs: Vec<(PathBuf, String)>,
    _staging: Vec<TempDir>,
}

/// Checks that `guest` is absolute and normal: no `.`, `..` or empty
/// components, not `/` and not at or under `/outputs`.
pub fn validate_guest_path(guest: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::InvalidTask(format!("guest path {guest:?} {why}")));
    let Some(rest) = guest.strip_prefix('/') else {
        return bad("must be absolute (start with /)");
    };
    if rest.is_empty() {
        return bad("must not be / itself");
    }
    if guest.contains('\0') {
        return bad("must not contain NUL");
    }
    for comp in rest.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            return bad("must not contain empty, . or .. components");
        }
    }
    if guest == OUTPUTS_GUEST_PATH || guest.starts_with("/outputs/") {
        return bad("must not be at or under /outputs, which is reserved for outputs");
    }
    Ok(())
}

/// Checks a job's mounts as `(guest path, is a directory)` before any data
/// is touched: each guest path valid ([`validate_guest_path`]), none
/// mounted twice, files below a directory other than `/`, and no file
/// inside a mounted directory. Callers that import local data first (the
/// CLI) run it before importing, so a refused job leaves nothing behind.
pub fn check_layout(mounts: &[(&str, bool)]) -> Result<(), Error> {
    let mut seen = std::collections::BTreeSet::new();
    for (guest, _) in mounts {
        validate_guest_path(guest)?;
        if !seen.insert(*guest) {
            return Err(Error::InvalidTask(format!("guest path {guest:?} is mounted twice")));
        }
    }
    for (guest, is_dir) in mounts {
        if *is_dir {
            continue;
        }
        let parent = guest.rsplit_once('/').map_or("", |(p, _)| p);
        if parent.is_empty() {
            return Err(Error::InvalidTask(format!(
                "file mounted at {guest:?}: files must be mounted below a directory such as /inputs, not at the root \
                 (e.g. /inputs{guest})"
            )));
        }
        if seen.contains(parent) {
            return Err(Error::InvalidTask(format!(
                "a file is mounted inside the mounted directory {parent:?}: mount it elsewhere"
            )));
        }
    }
    Ok(())
}

/// Validates mounts and prepares preopens. Directories are preopened as
/// they are; a single file is hard-linked (or copied, across file systems)
/// into a private staging directory preopened at the file's parent guest
/// path, because WASI can only preopen directories and preopening the real
/// parent would expose the file's siblings.
pub(crate) fn stage(mounts: &[Mount]) -> Result<Staged, Error> {
    let mut staged = Staged::default();
    let mut kinds = Vec::with_capacity(mounts.len());
    for m in mounts {
        validate_guest_path(&m.guest)?;
        let meta = fs::metadata(&m.host).map_err(|source| Error::Mount {
            host: m.host.clone(),
            guest: m.guest.clone(),
            source,
        })?;
        if !meta.is_dir() && !meta.is_file() {
            return Err(Error::Mount {
                host: m.host.clone(),
                guest: m.guest.clone(),
                source: std::io::Error::other("not a regular file or directory"),
            });
        }
        kinds.push((m.guest.as_str(), meta.is_dir()));
    }
    check_layout(&kinds)?;
    // parent guest dir -> files (basename, host path)
    let mut files: BTreeMap<String, Vec<(String, PathBuf)>> = BTreeMap::new();
    for (m, (_, is_dir)) in mounts.iter().zip(&kinds) {
        if *is_dir {
            staged.dirs.push((m.host.clone(), m.guest.clone()));
        } else {
            let (parent, name) = m.guest.rsplit_once('/').unwrap_or(("", &m.guest));
            let parent = if parent.is_empty() { "/" } else { parent };
            files.entry(parent.to_owned()).or_default().push((name.to_owned(), m.host.clone()));
        }
    }
    for (parent, entries) in files {
        let tmp = tempfile::Builder::new().prefix("shoal-mount-").tempdir().map_err(|source| Error::Mount {
            host: PathBuf::from("<staging>"),
            guest: parent.clone(),
            source,
        })?;
        for (name, host) in entries {
            let dst = tmp.path().join(&name);
            if fs::hard_link(&host, &dst).is_err() {
                fs::copy(&host, &dst).map_err(|source| Error::Mount {
                    host: host.clone(),
                    guest: format!("{parent}/{name}"),
                    source,
                })?;
            }
        }
        staged.dirs.push((tmp.path().to_path_buf(), parent));
        staged._staging.push(tmp);
    }
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_checked_without_touching_data() {
        assert!(check_layout(&[("/inputs", true), ("/models/m.onnx", false)]).is_ok());
        let err = |m: &[(&str, bool)]| check_layout(m).unwrap_err().to_string();
        assert!(err(&[("/x", false)]).contains("below a directory"));
        assert!(err(&[("/in", true), ("/in", false)]).contains("twice"));
        assert!(err(&[("/in", true), ("/in/a", false)]).contains("inside the mounted directory"));
        assert!(err(&[("in", true)]).contains("absolute"));
    }

    #[test]
    fn guest_paths() {
        assert!(validate_guest_path("/inputs").is_ok());
        assert!(validate_guest_path("/inputs/a.txt").is_ok());
        for bad in ["inputs", "/", "/a/../b", "/a/./b", "/a//b", "/a/", "/outputs", "/outputs/x", ".."] {
            assert!(validate_guest_path(bad).is_err(), "{bad} accepted");
        }
        assert!(validate_guest_path("/outputsx").is_ok());
    }

    #[test]
    fn file_mount_is_staged_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"A").unwrap();
        fs::write(dir.path().join("sibling"), b"S").unwrap();
        let staged = stage(&[Mount::new(dir.path().join("a"), "/in/a")]).unwrap();
        assert_eq!(staged.dirs.len(), 1);
        let (host, guest) = &staged.dirs[0];
        assert_eq!(guest, "/in");
        let names: Vec<_> = fs::read_dir(host).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a")]);
    }

    #[test]
    fn duplicates_and_missing_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mount::new(dir.path(), "/in");
        assert!(matches!(stage(&[m.clone(), m]), Err(Error::InvalidTask(_))));
        let missing = Mount::new(dir.path().join("nope"), "/in");
        assert!(matches!(stage(&[missing]), Err(Error::Mount { .. })));
    }
}
