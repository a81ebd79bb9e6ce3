//! Replacing a file all at once, so nothing a user made is half-overwritten.

use std::path::Path;

/// Writes `path` by letting `write` fill a temporary file beside it (`.{name}.tmp-{pid}`), then
/// renaming that into place: an interrupted write never leaves a half-written file where a good
/// one was. On failure the temporary file is removed and the reason returned.
pub fn write_via_temp(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    let name = path
        .file_name()
        .ok_or_else(|| "not a file path".to_string())?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_via_temp(&path, |tmp| {
            std::fs::write(tmp, "good").map_err(|e| e.to_string())
        })
        .unwrap();
        let err = write_via_temp(&path, |tmp| {
            std::fs::write(tmp, "half").map_err(|e| e.to_string())?;
            Err("interrupted".into())
        })
        .unwrap_err();
        assert_eq!(err, "interrupted");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "good");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
