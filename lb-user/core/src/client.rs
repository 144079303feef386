//! The client side of the control socket.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use thiserror::Error;

use crate::proto::{Request, Response};

/// Why a request did not get an answer.
#[derive(Debug, Error)]
pub enum ControlError {
    /// Connecting to the socket failed.
    #[error("cannot connect to xvsd at {path}: {source} (is xvsd running? are you root?)")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not valid.
    #[error("malformed answer from xvsd: {0}")]
    Decode(#[from] serde_json::Error),
    /// The daemon closed the connection without answering.
    #[error("xvsd closed the connection without answering")]
    NoAnswer,
}

/// Sends one request and waits for the answer.
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    // A daemon that refuses the request (too large, say) answers and closes before reading it
    // all: the write then fails, but its answer is waiting and says why.
    let written = stream.write_all(&line);
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    match (reader.read_line(&mut answer), written) {
        (Ok(n), _) if n > 0 => {}
        (_, Err(e)) => return Err(e.into()),
        (Err(e), Ok(())) => return Err(e.into()),
        (Ok(_), Ok(())) => return Err(ControlError::NoAnswer),
    }
    Ok(serde_json::from_str(&answer)?)
}
