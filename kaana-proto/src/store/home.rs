//! The node's state directory: one type that owns it and hands out typed paths, one atomic
//! write, one lock.
//!
//! Cron jobs and the server touch the same directory at once, so every read-modify-write holds
//! the directory's advisory lock ([`Home::lock`]) and every file is replaced atomically (temp
//! file, fsync, rename, fsync the directory). Every JSON file carries `"schema": 1`; a file that
//! does not parse is an error that names it, never a silent reset. Everything the tools create
//! is readable by the owner only (files 0600, directories 0700).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// The environment variable that names the state directory when `--home` is not given.
pub use crate::protocol::encoding::{SCHEMA_VERSION, Schema};

/// Why the state directory or one of its files could not be used.
#[derive(Debug, Error)]
pub enum StateError {
    /// Neither `--home`, `$KAANA_HOME`, `$XDG_STATE_HOME` nor `$HOME` names a directory.
    #[error("no state directory: pass --home DIR or set KAANA_HOME")]
    NoHome,
    /// The directory holds no node yet.
    #[error("{} holds no node (no identity.json): run `kaana-offer init` first", .0.display())]
    NotInitialised(PathBuf),
    /// The directory already holds a node, whose identity is never replaced.
    #[error("{} already holds node {node}; its identity is never replaced (use another --home)", .path.display())]
    AlreadyInitialised {
        /// The state directory.
        path: PathBuf,
        /// The node it holds.
        node: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: io::Error,
    },
    /// A file exists but its content is not what it should be.
    #[error("{} is damaged: {reason}", .path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The tool runs as another user than the one owning the state directory: files it wrote
    /// would lock that user out.
    #[error(
        "{} belongs to user {owner}, but this runs as user {me}: files written now would lock {owner} out. \
         Run it as {owner}, e.g. `sudo -u {owner} {tool} --home {} ...`",
        .path.display(), .path.display()
    )]
    WrongUser {
        /// The state directory.
        path: PathBuf,
        /// Who owns it.
        owner: String,
        /// Who runs the tool.
        me: String,
        /// The tool's name.
        tool: String,
    },
    /// The secret key file can be read by other users.
    #[error("{} can be read by other users (mode {mode:04o}); fix it with: chmod 600 {}", .path.display(), .path.display())]
    KeyExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl StateError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: &Path, source: io::Error) -> Self {
        StateError::Io { path: path.to_owned(), error: source }
    }

    /// A file whose content is wrong.
    pub fn damaged(path: &Path, reason: impl ToString) -> Self {
        StateError::Damaged { path: path.to_owned(), reason: reason.to_string() }
    }
}

/// The node's state directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

/// Holds the state directory's advisory lock until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl Home {
    /// The state directory at `root` (nothing is checked or created).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Home { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `identity.json`: the node's public id.
    pub fn identity_json(&self) -> PathBuf {
        self.root.join("identity.json")
    }

    /// `identity.key`: the secret key (mode 0600).
    pub fn identity_key(&self) -> PathBuf {
        self.root.join("identity.key")
    }

    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    /// `peers.json`: the address book.
    pub fn peers(&self) -> PathBuf {
        self.root.join("peers.json")
    }

    /// `events.jsonl`: the append-only log.
    pub fn events(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }

    /// `server.json`: where the running server is bound.
    pub fn server_info(&self) -> PathBuf {
        self.root.join("server.json")
    }

    /// `board.json`: the offers this node's board held when the server last wrote it whole.
    pub fn board(&self) -> PathBuf {
        self.root.join("board.json")
    }

    /// `board.log`: the board's changes since `board.json`, one JSON line each.
    pub fn board_log(&self) -> PathBuf {
        self.root.join("board.log")
    }

    /// `offers/`: this node's own offers, one file each, and `offers/seen.json`.
    pub fn offers_dir(&self) -> PathBuf {
        self.root.join("offers")
    }

    /// `offers/seen.json`: offers seen on other boards (the cache `accept` looks in).
    pub fn seen_offers(&self) -> PathBuf {
        self.offers_dir().join("seen.json")
    }

    /// `contracts/`: `<id>.json` (the double-signed contract, never changed) and
    /// `<id>.state.json` (this node's view of it).
    pub fn contracts_dir(&self) -> PathBuf {
        self.root.join("contracts")
    }

    /// `.lock`: the file the advisory lock is taken on.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join(".lock")
    }

    /// Creates the directory (mode 0700) if it is missing.
    pub fn create(&self) -> Result<(), StateError> {
        create_dir(&self.root)
    }

    /// Takes the directory's exclusive advisory lock, waiting for other holders.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        let (path, file) = self.lock_file()?;
        file.lock().map_err(|e| StateError::io(&path, e))?;
        Ok(StateLock { _file: file })
    }

    /// The state directory's lock if it is free now, else `None` (held by another process, or by
    /// this one: a caller that may run under the lock must not wait for it).
    pub fn try_lock(&self) -> Result<Option<StateLock>, StateError> {
        let (path, file) = self.lock_file()?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StateLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(StateError::io(&path, e)),
        }
    }

    fn lock_file(&self) -> Result<(PathBuf, File), StateError> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StateError::io(&path, e))?;
        Ok((path, file))
    }

    /// Reads and parses a JSON state file.
    pub fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<T, StateError> {
        let bytes = fs::read(path).map_err(|e| StateError::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| StateError::damaged(path, e))
    }

    /// Reads a JSON state file, or `None` when it does not exist.
    pub fn read_optional<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StateError> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| StateError::damaged(path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::io(path, e)),
        }
    }

    /// Writes a JSON state file atomically (pretty-printed, so a person can read it).
    pub fn write<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::damaged(path, e))?;
        bytes.push(b'\n');
        write_atomic(path, &bytes)
    }

    /// Appends one JSON line to `events.jsonl` and syncs it. Takes no lock: one `write` of a
    /// line to a file opened for appending lands whole.
    pub fn append_event<T: Serialize>(&self, event: &T) -> Result<(), StateError> {
        self.append_line(&self.events(), event)
    }

    /// Appends `value` as one JSON line to the file at `path` (made with mode 0600) and syncs
    /// it: one `write` of a line to a file opened for appending lands whole, or, after a crash,
    /// as a last line cut short that its reader skips.
    pub fn append_line<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StateError> {
        let mut line = serde_json::to_vec(value).map_err(|e| StateError::damaged(path, e))?;
        line.push(b'\n');
        let mut file =
            OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(|e| StateError::io(path, e))?;
        file.write_all(&line).and_then(|()| file.sync_data()).map_err(|e| StateError::io(path, e))
    }
}

/// Creates a directory and its parents, each new one with mode 0700.
pub fn create_dir(path: &Path) -> Result<(), StateError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(|e| StateError::io(path, e))
}

/// Replaces `path` with `bytes` atomically: a temp file beside it (mode 0600), fsync, rename,
/// fsync of the directory. Readers see the old content or the new, never a mix; a crash leaves
/// at most a stray temp file (named `.NAME.PID.N.tmp`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| StateError::damaged(path, "not a file path"))?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        StateError::io(path, e)
    })
}

/// Bytes free for an unprivileged user on the file system holding `path`.
pub fn free_space(path: &Path) -> Result<u64, StateError> {
    let st = rustix::fs::statvfs(path).map_err(|e| StateError::io(path, e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Refuses a secret key file that anyone but its owner can read or write.
pub fn check_key_private(path: &Path) -> Result<(), StateError> {
    let meta = fs::metadata(path).map_err(|e| StateError::io(path, e))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StateError::KeyExposed { path: path.to_owned(), mode });
    }
    Ok(())
}

/// Refuses to go on when the process runs as another user than the owner of `dir` (a root
/// shell on the service's state directory, say): whatever it wrote would be that user's, mode
/// 0600, and lock the owner out. The effective user is read from `/proc/self/status`.
/// A directory that does not exist yet is no one's.
pub fn check_same_user(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = match std::fs::metadata(dir) {
        Ok(m) => m.uid(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StateError::io(dir, e)),
    };
    let Some(me) = effective_uid() else { return Ok(()) };
    if owner == me {
        return Ok(());
    }
    let tool = std::env::args()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "kaana-offer".to_owned());
    Err(StateError::WrongUser { path: dir.to_owned(), owner: user_name(owner), me: user_name(me), tool })
}

/// The process's effective user id (`Uid:` in `/proc/self/status`: real, effective, saved, fs).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
}

/// The name `/etc/passwd` gives user `uid`, else the number.
fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_owned())
        })
        .next()
        .unwrap_or_else(|| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::os::unix::fs::PermissionsExt as _;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct File1 {
        schema: Schema,
        n: u32,
    }

    #[test]
    fn write_then_read_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("node"));
        home.create().unwrap();
        let path = home.root().join("x.json");
        home.write(&path, &File1 { schema: Schema, n: 3 }).unwrap();
        assert_eq!(home.read::<File1>(&path).unwrap(), File1 { schema: Schema, n: 3 });
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"schema\": 1"));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(home.root()).unwrap().permissions().mode() & 0o777, 0o700);
        // No temp file is left behind.
        assert_eq!(fs::read_dir(home.root()).unwrap().count(), 1);
    }

    #[test]
    fn damaged_and_future_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let path = dir.path().join("x.json");
        fs::write(&path, "{\"schema\": 1, \"n\": ").unwrap();
        let err = home.read::<File1>(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("damaged"), "{err}");
        fs::write(&path, "{\"schema\": 2, \"n\": 1}").unwrap();
        let err = home.read::<File1>(&path).unwrap_err().to_string();
        assert!(err.contains("schema 2"), "{err}");
        assert!(home.read_optional::<File1>(&dir.path().join("none.json")).unwrap().is_none());
    }

    #[test]
    fn exposed_key_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        fs::write(&path, "x").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_key_private(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_key_private(&path).is_ok());
    }
}
