//! A bench's scratch directory, removed however the bench ends.

use std::ops::Deref;
use std::path::{Path, PathBuf};

/// `<temp dir>/voxedge-bench-<kind>-<pid>`, created by [`WorkDir::create`] and removed with
/// everything in it when dropped: at the end of a run, and also when a bench returns early
/// with an error. With `VOXEDGE_BENCH_KEEP` set in the environment it is kept, for reading
/// the logs and configuration of a run.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    /// Creates the directory of bench `kind` for this process.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn create(kind: &str) -> std::io::Result<WorkDir> {
        let path =
            std::env::temp_dir().join(format!("voxedge-bench-{kind}-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(WorkDir(path))
    }
}

impl Deref for WorkDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for WorkDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::env::var_os("VOXEDGE_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WorkDir;

    #[test]
    fn removed_on_drop_with_its_contents() {
        let dir = WorkDir::create("workdir-test").expect("create");
        let path = dir.to_path_buf();
        std::fs::create_dir_all(dir.join("run")).expect("subdir");
        std::fs::write(dir.join("run/log"), b"x").expect("file");
        assert!(path.join("run/log").is_file());
        drop(dir);
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    fn removed_when_a_bench_returns_early() {
        fn bench() -> anyhow::Result<std::path::PathBuf> {
            let dir = WorkDir::create("workdir-early")?;
            let path = dir.to_path_buf();
            anyhow::ensure!(path.is_dir(), "not created");
            anyhow::bail!("failed at {}", path.display())
        }
        let err = bench().expect_err("fails").to_string();
        let path = err.trim_start_matches("failed at ");
        assert!(!std::path::Path::new(path).exists(), "{path} left behind");
    }
}
