//! File modes of the store: private at creation, a warning when an existing store is readable by
//! others (it holds customer data and connector state).

use std::path::Path;

/// Creates `dir` (and missing parents) readable by its owner only.
#[cfg(unix)]
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(not(unix))]
pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Options that create a file readable and writable by its owner only.
pub(super) fn private_file_options() -> std::fs::OpenOptions {
    #[allow(unused_mut)]
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// Makes everything under a newly created store private: directories `0700`, files `0600`.
#[cfg(unix)]
pub(super) fn restrict_contents(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700))?;
            restrict_contents(&entry.path())?;
        } else if kind.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn restrict_contents(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Returns the paths under an existing store (itself included) that others can read or enter.
#[cfg(unix)]
pub(super) fn readable_by_others(dir: &Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut loose = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(metadata) = std::fs::symlink_metadata(&path) else { continue };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            loose.push((path.clone(), mode));
        }
        if metadata.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            pending.extend(entries.filter_map(Result::ok).map(|entry| entry.path()));
        }
    }
    loose.sort();
    loose
}

#[cfg(not(unix))]
pub(super) fn readable_by_others(_dir: &Path) -> Vec<(std::path::PathBuf, u32)> {
    Vec::new()
}

/// Logs a warning naming the paths of an existing store that others can read.
pub(super) fn warn_if_readable_by_others(dir: &Path) {
    let loose = readable_by_others(dir);
    if loose.is_empty() {
        return;
    }
    let listed: Vec<String> =
        loose.iter().take(5).map(|(path, mode)| format!("{} ({mode:o})", path.display())).collect();
    tracing::warn!(
        store = %dir.display(),
        paths = %listed.join(", "),
        count = loose.len(),
        "the store is readable by other users; it holds customer data: chmod -R go-rwx it"
    );
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_new_store_is_private_and_a_loose_one_is_reported() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data/store");
        let store = crate::store::Store::open(&dir).unwrap();
        store.flush().unwrap();
        drop(store);
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("db")), 0o600);
        assert_eq!(mode(&dir.join("conf")), 0o600);
        assert_eq!(mode(&dir.join("crmsync.lock")), 0o600);
        assert!(readable_by_others(&dir).is_empty());
        std::fs::set_permissions(dir.join("db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(readable_by_others(&dir), vec![(dir.join("db"), 0o644)]);
    }
}
