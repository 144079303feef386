//! Other load balancers' configurations turned into xvs configuration files (`xvsadm import`):
//! [`keepalived`]'s `virtual_server` blocks. Pure: files are read through [`Files`], so the
//! tests give their includes from memory.

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

pub mod keepalived;

/// Where an import reads the files it is given and those they include.
pub trait Files {
    /// The text of one file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// The files a glob pattern (glob(3)'s `*`, `?`, `[...]`) matches, sorted by name as
    /// glob(3) returns them; none is not an error.
    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String>;
}

/// The filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct Disk;

impl Files for Disk {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        let paths = glob::glob(pattern).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for p in paths {
            out.push(p.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
}

/// Files held in memory, by path (tests; a caller that has the text already).
#[derive(Clone, Debug, Default)]
pub struct MemoryFiles(BTreeMap<PathBuf, String>);

impl MemoryFiles {
    /// These files plus one more.
    pub fn with(mut self, path: impl Into<PathBuf>, text: impl Into<String>) -> MemoryFiles {
        self.0.insert(path.into(), text.into());
        self
    }
}

impl Files for MemoryFiles {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        let pattern = glob::Pattern::new(pattern).map_err(|e| e.to_string())?;
        let options = glob::MatchOptions {
            require_literal_separator: true,
            require_literal_leading_dot: true,
            ..glob::MatchOptions::default()
        };
        // A BTreeMap iterates in path order: glob(3)'s.
        Ok(self
            .0
            .keys()
            .filter(|p| pattern.matches_path_with(p, options))
            .cloned()
            .collect())
    }
}
