//! A node's data directory: its keys, and the lock that keeps one identity
//! in one process. Two processes with the same node key would displace each
//! other's registration at the coordinator (the newest proof wins), each
//! believing it is reachable; two with the same libp2p key would fight over
//! the relay's reservation. So whoever uses a key of the directory holds
//! its lock, and a second process is refused with the holder's pid.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::identity::NodeKey;

const LOCK_FILE: &str = "bitpunch.lock";

/// Where the data lives when the user names no directory: `$BITPUNCH_DATA_DIR`,
/// then `$STATE_DIRECTORY` (systemd's `StateDirectory=`), then `~/.bitpunch`.
pub fn default_path() -> PathBuf {
    std::env::var_os("BITPUNCH_DATA_DIR")
        .or_else(|| {
            // systemd may list several, separated by ':'; the first is ours.
            std::env::var_os("STATE_DIRECTORY").and_then(|dirs| {
                dirs.to_str()
                    .and_then(|d| d.split(':').next())
                    .filter(|d| !d.is_empty())
                    .map(Into::into)
            })
        })
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".bitpunch")))
        .unwrap_or_else(|| PathBuf::from(".bitpunch"))
}

/// An open, locked data directory. The lock is released when this drops
/// (or the process ends, however it ends: it is an `flock`).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed (mode 0700) and takes its lock, or says
    /// which process holds it.
    pub fn open_locked(path: &Path) -> Result<DataDir> {
        create_private_dir(path)?;
        let lock_path = path.join(LOCK_FILE);
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        // SAFETY: flock on a file descriptor we own, for the life of `lock`.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    "another bitpunch process".to_string()
                } else {
                    format!("bitpunch process {holder}")
                };
                bail!(
                    "the data directory {} is in use by {by}: one identity is used by one \
                     process at a time (give this one its own --data-dir, or talk to the \
                     running node)",
                    path.display()
                );
            }
            return Err(error).with_context(|| format!("locking {}", lock_path.display()));
        }
        // Ours now: say who holds it, for the next one to be refused.
        lock.set_len(0)?;
        lock.rewind()?;
        write!(lock, "{}", std::process::id())?;
        lock.flush()?;
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node key (`node.key`), made on first use.
    pub fn node_key(&self) -> Result<NodeKey> {
        NodeKey::load_or_create(&self.path)
    }

    /// The libp2p identity (`libp2p.key`), made on first use.
    pub fn libp2p_keypair(&self) -> Result<::libp2p::identity::Keypair> {
        crate::libp2p::relay::load_or_create_keypair(&self.path.join("libp2p.key"))
    }
}

fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holder_and_freed_on_drop() {
        let dir = std::env::temp_dir().join(format!("bitpunch-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = DataDir::open_locked(&dir).unwrap();
        let second = DataDir::open_locked(&dir).unwrap_err().to_string();
        assert!(
            second.contains(&format!("bitpunch process {}", std::process::id())),
            "{second}"
        );
        assert!(second.contains("--data-dir"), "{second}");
        drop(first);
        let again = DataDir::open_locked(&dir).unwrap();
        assert_eq!(
            again.node_key().unwrap().id(),
            again.node_key().unwrap().id()
        );
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
