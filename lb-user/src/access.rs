//! Who may use the control socket: root, and the members of one group (`xvsd --socket-group`).
//!
//! Two locks: the socket file's mode (0600 root-only, or 0660 owned by the group), which the
//! kernel checks at connect(); and the peer's credentials, which xvsd checks on every
//! connection (SO_PEERCRED for the user, SO_PEERGROUPS for every group the client had when it
//! connected), so a socket whose mode was loosened by hand still refuses strangers.

use std::{
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::Path,
};

use thiserror::Error;

/// Why access could not be set up.
#[derive(Debug, Error)]
pub enum AccessError {
    /// No such group.
    #[error("socket group {0}: no such group")]
    NoSuchGroup(String),
    /// Looking the group up failed.
    #[error("socket group {name}: {source}")]
    Lookup {
        /// The group.
        name: String,
        /// Cause.
        source: nix::Error,
    },
    /// Setting the socket's owner or mode failed.
    #[error("socket permissions of {path}: {source}")]
    Permissions {
        /// The socket.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// Who may connect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketAccess {
    /// The group whose members may connect besides root: (name, gid).
    group: Option<(String, u32)>,
}

impl SocketAccess {
    /// Root only.
    pub fn root_only() -> Self {
        Self::default()
    }

    /// Root and the members of `group` (a name, or a numeric gid).
    pub fn with_group(group: &str) -> Result<Self, AccessError> {
        let found = match group.parse::<u32>() {
            Ok(gid) => nix::unistd::Group::from_gid(gid.into()),
            Err(_) => nix::unistd::Group::from_name(group),
        }
        .map_err(|source| AccessError::Lookup {
            name: group.to_string(),
            source,
        })?;
        match (found, group.parse::<u32>()) {
            (Some(g), _) => Ok(Self {
                group: Some((g.name, g.gid.as_raw())),
            }),
            // A numeric gid without a name in the group database is still a group.
            (None, Ok(gid)) => Ok(Self {
                group: Some((gid.to_string(), gid)),
            }),
            (None, Err(_)) => Err(AccessError::NoSuchGroup(group.to_string())),
        }
    }

    /// The group's gid, if one was given.
    pub fn gid(&self) -> Option<u32> {
        self.group.as_ref().map(|(_, gid)| *gid)
    }

    /// Sets the socket file's mode: 0600 for root only, 0660 and the group as its owner.
    pub fn apply_to_socket(&self, path: &Path) -> Result<(), AccessError> {
        let err = |source| AccessError::Permissions {
            path: path.display().to_string(),
            source,
        };
        match self.gid() {
            None => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)
            }
            Some(gid) => {
                std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)
            }
        }
    }

    /// Whether the peer of this connection may use the socket; Err says why not (to be sent
    /// to the client and logged).
    pub fn check(&self, stream: &impl AsRawFd, uid: u32, gid: u32) -> Result<(), String> {
        if uid == 0 {
            return Ok(());
        }
        let Some((name, group)) = &self.group else {
            return Err("permission denied: only root may control xvsd".into());
        };
        if gid == *group {
            return Ok(());
        }
        match peer_groups(stream.as_raw_fd()) {
            Ok(groups) if groups.contains(group) => Ok(()),
            Ok(_) => Err(format!(
                "permission denied: only root and members of group {name} may control xvsd"
            )),
            Err(e) => Err(format!(
                "permission denied: cannot read the client's groups: {e}"
            )),
        }
    }
}

/// The supplementary groups the peer had when it connected (SO_PEERGROUPS, Linux 4.13).
fn peer_groups(fd: i32) -> std::io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes long and lives across the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        // ERANGE: the kernel wrote the size it needs into `len`.
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve_by_name_or_number() {
        let root = SocketAccess::with_group("root").unwrap();
        assert_eq!(root.gid(), Some(0));
        assert_eq!(SocketAccess::with_group("0").unwrap().gid(), Some(0));
        let e = SocketAccess::with_group("no-such-group-xvs").unwrap_err();
        assert!(e.to_string().contains("no such group"), "{e}");
    }

    #[test]
    fn own_groups_are_read_from_a_socket_pair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let groups = peer_groups(a.as_raw_fd()).unwrap();
        // SAFETY: getgroups with a zero size only counts.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        assert_eq!(groups.len(), n as usize);
        let refused = SocketAccess::root_only().check(&a, 1000, 1000).unwrap_err();
        assert!(refused.contains("only root"), "{refused}");
        assert!(SocketAccess::root_only().check(&a, 0, 0).is_ok());
    }
}
