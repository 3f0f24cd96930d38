//! A directory only this user (and root) can change, for files the worker
//! loads as machine code.
//!
//! The compiled-code cache is loaded with wasmtime's `unsafe` deserialize:
//! whoever can write a file there, or replace a directory on the way to it,
//! can make the worker run machine code of their choosing. So before the
//! cache is used, every directory from `/` down to it must be owned by root
//! or by the worker's user, and none may be writable by group or others.
//! One exception, the same one `/tmp` relies on: a root-owned directory with
//! the sticky bit (`/tmp`, `/var/tmp`) may be world-writable, because no one
//! but its owner can rename or remove an entry in it, and the entry below it
//! must then be this user's. A symbolic link on the way must be owned by
//! root or this user too.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

const GROUP_OR_OTHER_WRITE: u32 = 0o022;
const STICKY: u32 = 0o1000;

/// Creates `path` if it is missing (mode 0700), checks the whole way to it
/// (see the [module docs](self)), and then takes group and other read access
/// away from it. Returns it, canonical.
///
/// # Errors
///
/// If it cannot be created, or if anyone but root and this user could
/// change it or a directory on the way; the message names the culprit.
pub(super) fn ensure(path: &Path) -> io::Result<PathBuf> {
    let path = std::path::absolute(path)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&path)?;
    let me = rustix::process::geteuid().as_raw();
    let canonical = path.canonicalize()?;
    if std::fs::metadata(&canonical)?.uid() != me {
        return Err(unsafe_path(
            &canonical,
            "it is not owned by the user this worker runs as",
        ));
    }
    check_each(&canonical, me)?;
    check_links(&path, me)?;
    std::fs::set_permissions(&canonical, std::fs::Permissions::from_mode(0o700))?;
    Ok(canonical)
}

/// Checks every directory from `/` to `canonical`.
fn check_each(canonical: &Path, me: u32) -> io::Result<()> {
    let mut below_sticky = false;
    for directory in prefixes(canonical) {
        let metadata = std::fs::symlink_metadata(&directory)?;
        let (uid, mode) = (metadata.uid(), metadata.mode());
        if uid != 0 && uid != me {
            return Err(unsafe_path(&directory, "it is owned by another user"));
        }
        if below_sticky && uid != me && directory != Path::new("/") {
            return Err(unsafe_path(
                &directory,
                "it sits in a sticky, world-writable directory but is not this user's",
            ));
        }
        let sticky_root_dir = uid == 0 && mode & STICKY != 0;
        if mode & GROUP_OR_OTHER_WRITE != 0 && !sticky_root_dir {
            return Err(unsafe_path(&directory, "group or others can write to it"));
        }
        below_sticky = sticky_root_dir && mode & GROUP_OR_OTHER_WRITE != 0;
    }
    Ok(())
}

/// Checks the symbolic links on the way to `path` as it was given.
fn check_links(path: &Path, me: u32) -> io::Result<()> {
    for prefix in prefixes(path) {
        let metadata = std::fs::symlink_metadata(&prefix)?;
        if metadata.file_type().is_symlink() && metadata.uid() != 0 && metadata.uid() != me {
            return Err(unsafe_path(
                &prefix,
                "it is a symbolic link owned by another user",
            ));
        }
    }
    Ok(())
}

/// `/`, `/a`, `/a/b`, … `path`.
fn prefixes(path: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    path.components()
        .filter(|component| !matches!(component, Component::CurDir))
        .scan(PathBuf::new(), |prefix, component| {
            prefix.push(component);
            Some(prefix.clone())
        })
}

fn unsafe_path(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} cannot hold compiled code safely: {why}; use a directory owned by this user \
             (mode 0700) on a path that only root and this user can change",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tf-private-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn a_fresh_directory_under_tmp_is_created_private() {
        let root = scratch();
        let cache = root.join("a/b");
        let made = ensure(&cache).unwrap();
        let mode = std::fs::metadata(&made).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_on_the_way_is_refused() {
        let root = scratch();
        let open = root.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = ensure(&open.join("cache")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            error.to_string().contains("group or others can write"),
            "{error}"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_cache_others_could_write_is_refused_and_one_they_could_read_is_closed() {
        let root = scratch();
        let cache = root.join("cache");
        std::fs::create_dir(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            ensure(&cache).is_err(),
            "files may already have been planted"
        );
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure(&cache).unwrap();
        assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_symbolic_link_on_the_way_is_followed_and_checked() {
        let root = scratch();
        let target = root.join("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, root.join("link")).unwrap();
        let made = ensure(&root.join("link/cache")).unwrap();
        assert_eq!(made, target.canonicalize().unwrap().join("cache"));
        std::fs::remove_dir_all(root).unwrap();
    }
}
