//! A local file written whole or not at all: the bytes go to a temporary file beside the
//! destination, renamed over it only once complete. Dropped before then, the temporary
//! file is removed, so a failed copy never leaves an empty or partial destination.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Temporary names tried before giving up (they are taken only by concurrent copies).
const ATTEMPTS: u32 = 100;

/// A destination being written through a temporary file in the same directory.
pub struct StagedFile {
    dest: PathBuf,
    tmp: PathBuf,
    file: File,
    committed: bool,
}

impl StagedFile {
    /// Creates the temporary file for `dest`. `dest` itself is not touched.
    pub fn create(dest: &Path) -> Result<StagedFile, String> {
        if dest.is_dir() {
            return Err(format!("{} is a directory", dest.display()));
        }
        let name = dest
            .file_name()
            .ok_or_else(|| format!("{} does not name a file", dest.display()))?;
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        for attempt in 0..ATTEMPTS {
            let mut tmp_name = OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".benchfs-{}-{attempt}", std::process::id()));
            let tmp = parent.join(tmp_name);
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(file) => {
                    return Ok(StagedFile {
                        dest: dest.to_path_buf(),
                        tmp,
                        file,
                        committed: false,
                    })
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(format!(
                        "cannot create a temporary file in {}: {e}",
                        parent.display()
                    ))
                }
            }
        }
        Err(format!(
            "cannot create a temporary file in {}: {ATTEMPTS} names are taken",
            parent.display()
        ))
    }

    /// The temporary file, to write to.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The temporary file's path, for messages.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Flushes the temporary file to disk and renames it over the destination.
    pub fn commit(mut self) -> Result<(), String> {
        self.file
            .sync_all()
            .map_err(|e| format!("cannot flush {}: {e}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                self.tmp.display(),
                self.dest.display()
            )
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
