//! Which network namespace this process runs in, and the default paths that depend on it.
//!
//! xvsd keeps per-director files under paths named after the interface (state, pins, control
//! socket). Interface names repeat across network namespaces (every container and every lab
//! namespace has its `eth0`), while the file system is usually shared, so two directors in two
//! namespaces would share one state file and the second would restore the first's
//! configuration. Paths are therefore scoped by namespace: the host's (the namespace of PID 1)
//! keeps the plain paths existing installations use; any other gets a directory of its own,
//! named after the namespace when `ip netns` named it, or after its inode otherwise (an unnamed
//! namespace does not outlive its processes, and neither need its files).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// The network namespace a process runs in, as far as file paths are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Netns {
    /// The host's namespace (PID 1's), or one that cannot be told apart from it.
    Initial,
    /// A namespace named by `ip netns` (a bind mount in /run/netns).
    Named(String),
    /// Any other namespace: its inode number.
    Anonymous(u64),
}

/// Where `ip netns` keeps its named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

impl Netns {
    /// The namespace of the calling process. A namespace `ip netns` named is told apart by its
    /// name. Any other counts as the host's unless PID 1's namespace can be read and differs
    /// (sandboxes hide it even from root), so a process that cannot tell keeps the plain paths.
    pub fn current() -> Netns {
        let Ok(own) = fs::metadata("/proc/self/ns/net") else {
            return Netns::Initial;
        };
        let own = (own.dev(), own.ino());
        let init_differs = match fs::metadata("/proc/1/ns/net") {
            Ok(init) if (init.dev(), init.ino()) == own => return Netns::Initial,
            Ok(_) => true,
            Err(_) => false,
        };
        match Self::identify(own.1, named_namespaces(Path::new(NETNS_RUN_DIR))) {
            Netns::Anonymous(_) if !init_differs => Netns::Initial,
            found => found,
        }
    }

    /// The name of the namespace with inode `ino` among `named` (name, inode), sorted by name
    /// so that a namespace bound under two names always gets the same one.
    fn identify(ino: u64, mut named: Vec<(String, u64)>) -> Netns {
        named.sort();
        named
            .into_iter()
            .find(|(_, i)| *i == ino)
            .map(|(name, _)| Netns::Named(name))
            .unwrap_or(Netns::Anonymous(ino))
    }

    /// `base` itself for the host's namespace, else `base/netns/NAME` (or `base/netns/ino-N`).
    pub fn scope(&self, base: &Path) -> PathBuf {
        match self {
            Netns::Initial => base.to_path_buf(),
            Netns::Named(name) => base.join("netns").join(name),
            Netns::Anonymous(ino) => base.join("netns").join(format!("ino-{ino}")),
        }
    }

    /// How logs and messages name it.
    pub fn describe(&self) -> String {
        match self {
            Netns::Initial => "the host's network namespace".into(),
            Netns::Named(name) => format!("network namespace {name}"),
            Netns::Anonymous(ino) => format!("the unnamed network namespace {ino}"),
        }
    }
}

/// (name, inode) of every namespace `ip netns` has named in `dir`.
fn named_namespaces(dir: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            // The bind mount's inode is the namespace's (fs::metadata follows the mount).
            let ino = fs::metadata(e.path()).ok()?.ino();
            Some((name, ino))
        })
        .collect()
}

/// A default path under `base` for this process's namespace (see [`Netns::scope`]), followed
/// by `leaf`.
pub fn default_path(base: &str, leaf: &str) -> PathBuf {
    Netns::current().scope(Path::new(base)).join(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_namespace_keeps_the_plain_paths() {
        assert_eq!(
            Netns::Initial.scope(Path::new("/var/lib/xvs")),
            Path::new("/var/lib/xvs")
        );
    }

    #[test]
    fn other_namespaces_get_a_directory_each() {
        let named = Netns::Named("lb-a".into());
        assert_eq!(
            named.scope(Path::new("/var/lib/xvs")).join("eth0.json"),
            Path::new("/var/lib/xvs/netns/lb-a/eth0.json")
        );
        assert_eq!(
            Netns::Anonymous(4026532001).scope(Path::new("/run/xvs")),
            Path::new("/run/xvs/netns/ino-4026532001")
        );
        assert_ne!(
            Netns::Named("a".into()).scope(Path::new("/x")),
            Netns::Named("b".into()).scope(Path::new("/x"))
        );
    }

    #[test]
    fn a_namespace_is_named_after_its_bind_mount_or_its_inode() {
        let named = vec![
            ("zz".to_string(), 7),
            ("b".to_string(), 5),
            ("a".to_string(), 7),
        ];
        assert_eq!(Netns::identify(7, named.clone()), Netns::Named("a".into()));
        assert_eq!(Netns::identify(5, named.clone()), Netns::Named("b".into()));
        assert_eq!(Netns::identify(9, named), Netns::Anonymous(9));
    }

    #[test]
    fn this_process_is_identified() {
        // The unit tests run in the host's namespace or in one of a test harness: either way
        // the answer is stable from one call to the next.
        assert_eq!(Netns::current(), Netns::current());
    }
}
