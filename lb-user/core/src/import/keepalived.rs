//! `xvsadm import keepalived FILE`: a keepalived.conf's load balancing (its `virtual_server`
//! and `virtual_server_group` blocks, their real servers and checkers) as an xvs configuration
//! file (the format of [`crate::config_file`]), with a `#` comment for every setting that
//! cannot be carried over and why. VRRP and the rest stay keepalived's: the header says which
//! blocks were left to it.
//!
//! Three stages: [`source`] reads the text (includes, conditional lines, definitions,
//! comments, words), [`tree`] nests it into blocks, `convert` turns the blocks into the file.
//! The file is checked with xvs's own parser before it is returned: what xvs would refuse is
//! an error at the keepalived line it came from.

use std::{fmt, io, path::Path, rc::Rc};

use thiserror::Error;

use super::Files;

mod convert;
mod source;
mod tree;

#[cfg(test)]
mod tests;

/// Why a keepalived configuration was not converted.
#[derive(Debug, Error)]
pub enum ImportError {
    /// The file given could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// A line of the configuration is malformed, or says what xvs cannot do at all.
    #[error("{file}:{line}: {reason}")]
    At {
        /// The file (the one given, or one it includes).
        file: String,
        /// Line, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Choices keepalived takes from its command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// keepalived's `-i ID` (config-id): `@ID` lines are read, `@^ID` lines are not.
    pub config_id: Option<String>,
}

/// A place in keepalived's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct At {
    file: Rc<str>,
    line: usize,
}

impl At {
    fn error(&self, reason: impl Into<String>) -> ImportError {
        ImportError::At {
            file: self.file.to_string(),
            line: self.line,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Converts the keepalived configuration at `path` (and the files it includes, read through
/// `files`) into the text of an xvs configuration file.
pub fn import(files: &dyn Files, path: &Path, options: &Options) -> Result<String, ImportError> {
    let source = source::read(files, path, options)?;
    let nodes = tree::build(&source.lines)?;
    convert::convert(&path.display().to_string(), &nodes, &source.notes)
}
