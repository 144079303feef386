//! Exclusive advisory locks (flock(2)) taken without waiting: how xvsd's pin directory and
//! state file, and xvsadm realserver's record, tell that another process holds them.

use std::{fs::File, io, os::fd::AsRawFd};

/// Takes an exclusive lock on `file` without waiting: Ok(true) when taken (held until `file`
/// is closed), Ok(false) when another open file holds it, Err for any other failure.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock(2) on a descriptor `file` keeps open for the call; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_file_cannot_take_a_held_lock() {
        let path = std::env::temp_dir().join(format!("xvs-flock-test-{}", std::process::id()));
        let first = File::create(&path).unwrap();
        let second = File::open(&path).unwrap();
        assert!(try_lock_exclusive(&first).unwrap());
        assert!(!try_lock_exclusive(&second).unwrap());
        drop(first);
        assert!(try_lock_exclusive(&second).unwrap());
        let _ = std::fs::remove_file(&path);
    }
}
