//! Durable state: the configuration xvsd runs (services, real servers, timeouts), saved after
//! every accepted change and restored when xvsd starts.
//!
//! One file per director interface, `STATE_DIR/IFACE.json`, written atomically: the new
//! contents go to a temporary file in the same directory, which is fsynced, renamed over the
//! old file, and the directory is fsynced. A crash at any point leaves the old file or the new
//! one, never a mix, so xvsd restarts with a configuration that was committed.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    model::{Config, Timeouts},
    sync::daemon::Daemons,
};

/// Where xvsd keeps its state unless told otherwise (`xvsd --state-dir`), in the host's
/// network namespace.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xvs";

/// The default state directory of this process's network namespace: [`DEFAULT_STATE_DIR`] in
/// the host's, `/var/lib/xvs/netns/NAME` in another (two directors whose interfaces share a
/// name in two namespaces must not share a state file).
pub fn default_dir() -> PathBuf {
    crate::netns::Netns::current().scope(Path::new(DEFAULT_STATE_DIR))
}

/// Version of the state file's layout; a file of another version is refused, not guessed at.
const FORMAT: u32 = 1;

/// IPVS's default connection timeouts (seconds), which a configuration without `--set` has.
pub const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    tcp: 900,
    tcpfin: 120,
    udp: 300,
};

/// Everything an operator configures: what the configuration file declares, what the state
/// file keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Services and real servers.
    pub config: Config,
    /// Connection timeouts in seconds (`--set`).
    pub timeouts: Timeouts,
}

impl Default for DesiredState {
    fn default() -> Self {
        Self {
            config: Config::default(),
            timeouts: DEFAULT_TIMEOUTS,
        }
    }
}

/// Why the state could not be read or written.
#[derive(Debug, Error)]
pub enum StateError {
    /// Reading, writing or syncing failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Another xvsd holds the state file.
    #[error("{path} is in use by another xvsd (a director on an interface of the same name, in another network namespace?); give each director its own --state-dir")]
    InUse {
        /// The state file.
        path: String,
    },
    /// The file is not a state file this xvsd understands.
    #[error("{path} is not a valid xvs state file ({reason}); delete it or start xvsd with --reset-state to start empty")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// On disk: the layout version beside the state. The sync daemons were added later without
/// a new format: a file without them (an older xvsd's) has none running, and a file with none
/// running does not name them, so an older xvsd still reads it.
#[derive(Serialize)]
struct SavedRef<'a> {
    format: u32,
    config: &'a Config,
    timeouts: Timeouts,
    #[serde(skip_serializing_if = "Daemons::is_empty")]
    sync_daemons: &'a Daemons,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    format: u32,
    config: Config,
    timeouts: Timeouts,
    #[serde(default)]
    sync_daemons: Daemons,
}

/// Everything a state file holds: the configuration, and the sync daemons that run (started
/// with xvsadm, not part of a configuration file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedState {
    /// Services, real servers and timeouts.
    pub desired: DesiredState,
    /// The connection-sync daemons to run.
    pub sync_daemons: Daemons,
}

/// Holds a state file's lock (see [`StateFile::lock`]) until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: fs::File,
}

/// The state file of one director.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

/// A state written beside the state file, not yet in its place (see [`StateFile::stage`]).
#[derive(Debug)]
pub struct Staged {
    file: StateFile,
    /// The temporary file, until it is renamed.
    temp: Option<PathBuf>,
}

impl Staged {
    /// Renames the staged state over the state file and makes that durable.
    pub fn commit(mut self) -> Result<(), StateError> {
        let Some(temp) = self.temp.take() else {
            return Ok(());
        };
        let path = &self.file.path;
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::rename(&temp, path).map_err(self.file.io("renaming into", path))?;
        // The rename is durable only once the directory entry is.
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(self.file.io("syncing", dir))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}

impl StateFile {
    /// The state file of the director on `iface`, in `dir`.
    pub fn for_iface(dir: &Path, iface: &str) -> Self {
        Self {
            path: dir.join(format!("{iface}.json")),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn temp_path(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!(".{name}.tmp"))
    }

    fn io(&self, what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.display().to_string();
        move |source| StateError::Io { what, path, source }
    }

    /// The saved configuration, or None when there is none yet.
    pub fn load(&self) -> Result<Option<DesiredState>, StateError> {
        Ok(self.load_all()?.map(|s| s.desired))
    }

    /// The saved configuration and sync daemons, or None when there is nothing saved yet.
    pub fn load_all(&self) -> Result<Option<SavedState>, StateError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io("reading", &self.path)(e)),
        };
        let corrupt = |reason: String| StateError::Corrupt {
            path: self.path.display().to_string(),
            reason,
        };
        let saved: Saved = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if saved.format != FORMAT {
            return Err(corrupt(format!(
                "layout version {}, this xvsd reads {FORMAT}",
                saved.format
            )));
        }
        Ok(Some(SavedState {
            desired: DesiredState {
                config: saved.config,
                timeouts: saved.timeouts,
            },
            sync_daemons: saved.sync_daemons,
        }))
    }

    /// Saves the state atomically and durably: when this returns Ok, a crash or power loss
    /// leaves exactly this state on disk; when it fails, the previous file is untouched.
    pub fn save(
        &self,
        config: &Config,
        timeouts: Timeouts,
        sync_daemons: &Daemons,
    ) -> Result<(), StateError> {
        self.stage(config, timeouts, sync_daemons)?.commit()
    }

    /// The first half of [`StateFile::save`]: the new state is written and synced to a
    /// temporary file, which [`Staged::commit`] renames into place (dropped, it is removed).
    /// What fails for lack of space or permission fails here, before anything else changes.
    pub fn stage(
        &self,
        config: &Config,
        timeouts: Timeouts,
        sync_daemons: &Daemons,
    ) -> Result<Staged, StateError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(self.io("creating", dir))?;
        let mut text = serde_json::to_vec(&SavedRef {
            format: FORMAT,
            config,
            timeouts,
            sync_daemons,
        })
        .expect("the configuration serialises");
        text.push(b'\n');
        let temp = self.temp_path();
        let staged = Staged {
            file: self.clone(),
            temp: Some(temp.clone()),
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .map_err(self.io("creating", &temp))?;
        file.write_all(&text).map_err(self.io("writing", &temp))?;
        file.sync_all().map_err(self.io("syncing", &temp))?;
        Ok(staged)
    }

    /// Locks the state file for this process's lifetime (released when the lock is dropped):
    /// two xvsd told to keep their state in one file would restore and overwrite each other's
    /// configuration, so the second is refused.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(self.io("creating", dir))?;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = self.path.with_file_name(format!(".{name}.lock"));
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(self.io("creating", &path))?;
        if !crate::flock::try_lock_exclusive(&file).map_err(self.io("locking", &path))? {
            return Err(StateError::InUse {
                path: self.path.display().to_string(),
            });
        }
        Ok(StateLock { _file: file })
    }

    /// Deletes the saved state (`xvsd --reset-state`).
    pub fn remove(&self) -> Result<(), StateError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("removing", &self.path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Change, Protocol, RealServer, Scheduler, ServiceKey};

    #[test]
    fn a_second_holder_of_the_state_file_is_refused_until_the_first_lets_go() {
        let dir = scratch("lock");
        let file = StateFile::for_iface(&dir, "eth0");
        let held = file.lock().expect("first lock");
        let err = StateFile::for_iface(&dir, "eth0").lock().unwrap_err();
        assert!(matches!(err, StateError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("--state-dir"), "{err}");
        // Another interface's file is another lock.
        let _other = StateFile::for_iface(&dir, "eth1").lock().expect("eth1");
        drop(held);
        let _again = file.lock().expect("free again");
        let _ = fs::remove_dir_all(&dir);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xvs-state-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn save_then_load_returns_the_same_state() {
        let dir = scratch("roundtrip");
        let file = StateFile::for_iface(&dir, "eth0");
        assert_eq!(file.load().unwrap(), None, "no state before the first save");
        let key = ServiceKey::new(Protocol::Tcp, "203.0.113.10:80".parse().unwrap());
        let mut config = Config::default();
        config
            .apply_all(&[
                Change::add_service(key, Scheduler::Wrr),
                Change::AddReal {
                    service: key,
                    real: RealServer::dr("198.51.100.11:80".parse().unwrap(), 3),
                },
            ])
            .unwrap();
        let timeouts = Timeouts {
            tcp: 100,
            tcpfin: 20,
            udp: 30,
        };
        file.save(&config, timeouts, &Daemons::default()).unwrap();
        assert_eq!(
            file.load().unwrap(),
            Some(DesiredState { config, timeouts })
        );
        assert!(!file.temp_path().exists(), "the temporary file was renamed");
        file.remove().unwrap();
        assert_eq!(file.load().unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_staged_state_is_in_place_only_once_committed() {
        let dir = scratch("staged");
        let file = StateFile::for_iface(&dir, "eth0");
        file.save(&Config::default(), DEFAULT_TIMEOUTS, &Daemons::default())
            .unwrap();
        let other = Timeouts {
            tcp: 7,
            tcpfin: 8,
            udp: 9,
        };
        let staged = file
            .stage(&Config::default(), other, &Daemons::default())
            .unwrap();
        assert_eq!(file.load().unwrap(), Some(DesiredState::default()));
        drop(staged);
        assert!(!file.temp_path().exists(), "a dropped stage leaves nothing");
        assert_eq!(file.load().unwrap(), Some(DesiredState::default()));
        file.stage(&Config::default(), other, &Daemons::default())
            .unwrap()
            .commit()
            .unwrap();
        assert_eq!(file.load().unwrap().unwrap().timeouts, other);
        assert!(!file.temp_path().exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_save_leaves_the_previous_state() {
        let dir = scratch("failed");
        let file = StateFile::for_iface(&dir, "eth0");
        file.save(&Config::default(), DEFAULT_TIMEOUTS, &Daemons::default())
            .unwrap();
        // A directory where the temporary file goes: creating it fails.
        fs::create_dir_all(file.temp_path()).unwrap();
        let other = Timeouts {
            tcp: 1,
            tcpfin: 1,
            udp: 1,
        };
        let e = file
            .save(&Config::default(), other, &Daemons::default())
            .unwrap_err();
        assert!(e.to_string().contains("creating"), "{e}");
        assert_eq!(file.load().unwrap(), Some(DesiredState::default()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sync_daemons_are_saved_and_older_files_without_them_still_load() {
        use crate::sync::{daemon::DaemonConfig, Role};
        let dir = scratch("daemons");
        fs::create_dir_all(&dir).unwrap();
        let file = StateFile::for_iface(&dir, "eth0");
        // As an xvsd before the sync daemons wrote it.
        let old = r#"{"format":1,"config":{"services":[]},"timeouts":{"tcp":900,"tcpfin":120,"udp":300}}"#;
        fs::write(file.path(), old).unwrap();
        let loaded = file.load_all().unwrap().unwrap();
        assert_eq!(loaded.desired, DesiredState::default());
        assert!(loaded.sync_daemons.is_empty());
        // None running: the file reads as before (an older xvsd still takes it).
        file.save(&Config::default(), DEFAULT_TIMEOUTS, &Daemons::default())
            .unwrap();
        assert!(!fs::read_to_string(file.path())
            .unwrap()
            .contains("sync_daemons"));
        let daemons = Daemons::default()
            .started(DaemonConfig {
                syncid: 3,
                ..DaemonConfig::new(Role::Master)
            })
            .unwrap()
            .started(DaemonConfig::new(Role::Backup))
            .unwrap();
        file.save(&Config::default(), DEFAULT_TIMEOUTS, &daemons)
            .unwrap();
        assert_eq!(file.load_all().unwrap().unwrap().sync_daemons, daemons);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_and_other_versions_are_refused_with_the_way_out() {
        let dir = scratch("corrupt");
        fs::create_dir_all(&dir).unwrap();
        let file = StateFile::for_iface(&dir, "eth0");
        for text in [
            "{not json",
            r#"{"format":99,"config":{"services":[]},"timeouts":{"tcp":1,"tcpfin":1,"udp":1}}"#,
        ] {
            fs::write(file.path(), text).unwrap();
            let e = file.load().unwrap_err().to_string();
            assert!(e.contains("--reset-state"), "{e}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
