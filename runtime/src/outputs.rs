//! Measuring `/outputs` without following symlinks.

use std::fs;
use std::path::Path;

use crate::outcome::OutputsUsage;

/// Walks `root` and sums apparent file sizes and entries. Stops early once
/// either bound is exceeded, so a job that creates millions of files cannot
/// make each check arbitrarily slow. Symlinks are counted, never followed.
pub(crate) fn measure(root: &Path, max_bytes: u64, max_files: u64) -> std::io::Result<OutputsUsage> {
    let mut usage = OutputsUsage::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            // `DirEntry::file_type` does not follow symlinks.
            let ty = entry.file_type()?;
            usage.files += 1;
            if ty.is_symlink() {
                usage.symlinks += 1;
            } else if ty.is_dir() {
                stack.push(entry.path());
            } else {
                usage.bytes = usage.bytes.saturating_add(entry.metadata()?.len());
            }
            if usage.bytes > max_bytes || usage.files > max_files {
                return Ok(usage);
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_files_dirs_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"12345").unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/b"), b"123").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("d/link")).unwrap();
        let u = measure(dir.path(), u64::MAX, u64::MAX).unwrap();
        assert_eq!(u.bytes, 8);
        assert_eq!(u.files, 4);
        assert_eq!(u.symlinks, 1);
    }

    #[test]
    fn stops_early_past_bound() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10 {
            fs::write(dir.path().join(i.to_string()), b"x").unwrap();
        }
        let u = measure(dir.path(), u64::MAX, 3).unwrap();
        assert_eq!(u.files, 4);
    }
}
