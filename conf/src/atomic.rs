//! Atomic file replacement: readers (the plugin, runtimes, other agents) see the old
//! file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A temp file in `target`'s directory, hidden (leading dot) and with a `.tmp` suffix so
/// a runtime scanning the CNI config dir never picks it up.
fn temp_path(target: &Path) -> PathBuf {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()))
}

/// Writes `bytes` to a temp file beside `path`, syncs it, sets `mode`, and renames it
/// over `path`. Creates the directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Like [`write_atomic`], but leaves the file alone when it already holds `bytes`, so
/// watchers (a runtime on the CNI config dir, other agents) see no change. Returns
/// whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<bool> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(false);
    }
    write_atomic(path, bytes, mode)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_skips_equal_content() {
        let dir = std::env::temp_dir().join(format!("twill-atomic-{}", std::process::id()));
        let p = dir.join("sub/a.conflist");
        assert!(write_if_changed(&p, b"one", 0o644).unwrap());
        assert!(!write_if_changed(&p, b"one", 0o644).unwrap());
        assert!(write_if_changed(&p, b"two", 0o644).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let left: Vec<_> = std::fs::read_dir(dir.join("sub")).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file is left behind");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
