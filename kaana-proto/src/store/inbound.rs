//! A holder's store of one peer's copy under one contract:
//! `<storage>/inbound/<contract>/`.
//!
//! Longer than 400 lines: the holder's store is one layout (extents and their outboards,
//! lists, the commit, the trash, scrubs, leftovers) that each part must keep crash-safe with the
//! others; a fifth is tests. (The owner's record, which shares the layout, is `outbound.rs`.)
//!
//! Extents are content-addressed files (`extents/ab/abcd…`), each written to a temp file,
//! synced, and renamed into place only if its bytes hash to its name. A generation is committed
//! by writing its extent list (`lists/<gen>.bin`), keeping the generation it replaces
//! (`kept/<gen>.json`: its manifest and receipt), and then, atomically, `committed.json` (the
//! owner-signed manifest and the holder's receipt of it): that rename is the commit point, so a
//! crash anywhere leaves every earlier generation whole. Then the contract's history terms
//! decide which superseded generations to retire ([`crate::protocol::history`]): each is retired
//! by removing its `kept/` file (the point of no return), and only after that are the lists and
//! extents no kept generation names dropped (copy-on-write: an extent stays while any kept
//! generation names it). A crash between these steps leaves more than is owed, never less.
//!
//! Answers to challenges read a committed generation's extents while a commit may be replacing
//! it, in another process or thread: so answers hold the store's `.lock` shared, and a commit
//! (and anything else that removes extents a generation may name) holds it exclusively. An
//! answer thus sees one whole generation, never a half-dropped one.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::challenge::{self, Receipt};
use crate::protocol::encoding;
use crate::protocol::history::{self, History};
use crate::protocol::manifest::{ExtentHash, Geometry, Manifest, ManifestError, list_hasher};
use crate::protocol::market::RecordId;
use crate::protocol::proof;
use crate::protocol::push::Held;
use crate::protocol::record::Signed;
use crate::store::buffer::AlignedBuf;
use crate::store::home::{Schema, StateError, create_dir, write_atomic};

/// Why the store refused or failed.
#[derive(Debug, Error)]
pub enum InboundError {
    /// The bytes do not hash to the extent's id.
    #[error("extent bytes do not match their hash {}", encoding::hex_encode(.0))]
    HashMismatch(ExtentHash),
    /// The manifest names extents the store does not have.
    #[error("{0} extents of the manifest have not been received")]
    Missing(usize),
    /// The generations kept once this one is committed would have lists of more bytes than
    /// the room for them.
    #[error(
        "the generations kept with this one would have lists of {kept} bytes here, more than the {room} bytes \
         allowed for them (the contract's size); commit again once older generations are retired"
    )]
    Lists {
        /// Bytes of the lists kept, this one's included.
        kept: u64,
        /// The room for them.
        room: u64,
    },
    /// The manifest names, at an index, an extent stored here with another length than its
    /// geometry gives that index.
    #[error("extent {} stored here has {len} bytes; the manifest's extent {index} has {expected}", encoding::hex_encode(.hash))]
    Length {
        /// The extent.
        hash: ExtentHash,
        /// Its index in the manifest.
        index: u64,
        /// Its bytes here.
        len: u64,
        /// The bytes the manifest's geometry gives that index.
        expected: u64,
    },
    /// The manifest or its list is wrong.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The disk failed or is full.
    #[error(transparent)]
    State(#[from] StateError),
}

/// `committed.json`: the committed generation's owner-signed manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Committed {
    /// Always 1.
    pub schema: Schema,
    /// The manifest.
    pub manifest: Signed<Manifest>,
    /// In the owner's record: the holder's signed receipt of this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Signed<Receipt>>,
}

/// A committed generation: the owner-signed manifest and its extent list.
pub type CommittedCopy = (Signed<Manifest>, Vec<u8>);

/// A committed generation as the owner records it: with the holder's receipt.
pub type RecordedCopy = (Signed<Manifest>, Vec<u8>, Option<Signed<Receipt>>);

/// A kept generation with its list opened to be read a part at a time: manifest, receipt, list.
pub type OpenedCopy = (Signed<Manifest>, Option<Signed<Receipt>>, crate::store::buffer::PartReader);

/// A kept generation's manifest and (in an owner's record, and the holder's own) receipt.
pub type KeptManifest = (Signed<Manifest>, Option<Signed<Receipt>>);

/// A chunk and its proof: the siblings' chaining values, nearest the chunk first.
pub type ChunkProof = (Vec<u8>, Vec<[u8; 32]>);

/// One contract's inbound store.
#[derive(Debug, Clone)]
pub struct Inbound {
    dir: PathBuf,
}

impl Inbound {
    /// The store for `contract` under the node's storage directory.
    pub fn new(storage: &Path, contract: &RecordId) -> Self {
        Inbound { dir: storage.join("inbound").join(contract.to_string()) }
    }

    /// A store at `dir` (to clean up one whose contract is unknown).
    pub fn at_dir(dir: &Path) -> Self {
        Inbound { dir: dir.to_owned() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn extents_dir(&self) -> PathBuf {
        self.dir.join("extents")
    }

    fn extent_path(&self, hash: &ExtentHash) -> PathBuf {
        let hex = encoding::hex_encode(hash);
        self.extents_dir().join(&hex[..2]).join(hex)
    }

    fn list_path(&self, generation: u64) -> PathBuf {
        self.dir.join("lists").join(format!("{generation}.bin"))
    }

    fn committed_path(&self) -> PathBuf {
        self.dir.join("committed.json")
    }

    fn kept_dir(&self) -> PathBuf {
        self.dir.join("kept")
    }

    fn kept_path(&self, generation: u64) -> PathBuf {
        self.kept_dir().join(format!("{generation}.json"))
    }

    /// Takes the store's lock: shared to read a committed generation, exclusive to replace or
    /// drop one. `None` (nothing to hold) when the store does not exist and `exclusive` is false.
    pub fn lock(&self, exclusive: bool) -> Result<Option<File>, StateError> {
        let path = self.dir.join(".lock");
        if exclusive {
            create_dir(&self.dir)?;
        }
        let file = match OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !exclusive => return Ok(None),
            Err(e) => return Err(StateError::io(&path, e)),
        };
        if exclusive { file.lock() } else { file.lock_shared() }.map_err(|e| StateError::io(&path, e))?;
        Ok(Some(file))
    }

    /// Whether the extent is stored.
    pub fn has(&self, hash: &ExtentHash) -> bool {
        self.extent_path(hash).is_file()
    }

    /// Bytes of the extents stored (what counts against a contract's quota).
    pub fn stored_bytes(&self) -> Result<u64, StateError> {
        let mut bytes = 0;
        self.each_present(|_, len| bytes += len)?;
        Ok(bytes)
    }

    /// Every stored extent, with its size.
    pub fn present(&self) -> Result<Vec<(ExtentHash, u64)>, StateError> {
        let mut out = Vec::new();
        self.each_present(|hash, len| out.push((hash, len)))?;
        Ok(out)
    }

    /// Calls `found` with every stored extent and its size, holding none of them.
    pub fn each_present(&self, mut found: impl FnMut(ExtentHash, u64)) -> Result<(), StateError> {
        let root = self.extents_dir();
        for sub in read_dir_or_empty(&root)? {
            if !sub.is_dir() {
                continue;
            }
            for path in read_dir_or_empty(&sub)? {
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
                let Ok(hash) = encoding::hex_decode::<32>(name) else { continue };
                // An extent a commit moved aside meanwhile is not present.
                match fs::metadata(&path) {
                    Ok(m) => found(hash, m.len()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StateError::io(&path, e)),
                }
            }
        }
        Ok(())
    }

    fn outboard_path(&self, hash: &ExtentHash) -> PathBuf {
        self.extent_path(hash).with_extension("ob")
    }

    /// Stores an extent after checking its bytes hash to `hash`, synced to disk before it is
    /// renamed into place, and that name synced too ([`Inbound::write`], then [`Written::sync`]).
    pub fn put(&self, hash: &ExtentHash, data: &[u8]) -> Result<(), InboundError> {
        self.write(hash, data)?.sync()
    }

    /// The first half of [`Inbound::put`], the half that needs `data`: checks that it hashes to
    /// `hash` and writes it to a temp file beside its place (straight to the device when `data`
    /// is aligned for it). Its outboard (for chunk proofs) is made in the same pass and written
    /// beside it; it is a cache, remade from the extent if it is ever lost or wrong. `data` may
    /// be reused once this returns; the extent is stored only when [`Written::sync`] returns.
    /// An extent stored already with another length is damaged, and replaced.
    pub fn write(&self, hash: &ExtentHash, data: &[u8]) -> Result<Written, InboundError> {
        let (groups, root) = proof::outboard(data);
        if root.as_bytes() != hash {
            return Err(InboundError::HashMismatch(*hash));
        }
        let path = self.extent_path(hash);
        let dir = path.parent().unwrap_or(&self.dir).to_owned();
        // Stored already, whole: nothing to write. A stored file of another length was cut
        // short or grown on this disk (its bytes hash to `hash` only at `data`'s length): these
        // bytes, checked, replace it.
        if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == data.len() as u64) {
            let names = self.names_to_sync(&dir);
            return Ok(Written { temp: None, path, names });
        }
        create_dir(&dir)?;
        if !groups.is_empty() {
            let ob: Vec<u8> = groups.iter().flatten().copied().collect();
            let ob_path = self.outboard_path(hash);
            write_private(&ob_path, &ob).map_err(|e| StateError::io(&ob_path, e))?;
        }
        let tmp = dir.join(format!(".{}.{}.tmp", std::process::id(), next_tmp()));
        match crate::store::buffer::create_file(&tmp, data) {
            // The directory is looked at once the temp file is in it: if the rename succeeds,
            // it is the directory looked at (removing it would have taken the temp file too).
            Ok(file) => Ok(Written { temp: Some((file, tmp)), path, names: self.names_to_sync(&dir) }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(InboundError::State(StateError::io(&path, e)))
            }
        }
    }

    /// What [`Written::sync`] syncs for an extent in `dir` (`extents/ab`): `dir` itself (the
    /// extent's new name); unless `dir`'s own name is known to be durable already
    /// ([`DURABLE_DIRS`]), `extents` too (which names it); and unless `extents`' name is known
    /// to be durable, every directory above it up to the storage folder: the store's, `inbound`
    /// and the storage folder (a first write makes them all).
    fn names_to_sync(&self, dir: &Path) -> Names {
        let known = |key: &Option<DirKey>| {
            key.as_ref().is_some_and(|k| DURABLE_DIRS.lock().is_ok_and(|known| known.contains(k)))
        };
        let key = dir_key(dir);
        if known(&key) {
            return Names { dirs: vec![dir.to_owned()], learn: Vec::new() };
        }
        let extents = self.extents_dir();
        let extents_key = dir_key(&extents);
        let mut dirs = vec![dir.to_owned(), extents];
        if !known(&extents_key) {
            dirs.extend(self.dir.ancestors().take(3).filter(|d| !d.as_os_str().is_empty()).map(Path::to_owned));
        }
        Names { dirs, learn: key.into_iter().chain(extents_key).collect() }
    }

    /// An extent opened to be read a part at a time; `None` if it is not stored.
    pub fn open_extent(&self, hash: &ExtentHash) -> Result<Option<crate::store::buffer::PartReader>, StateError> {
        let path = self.extent_path(hash);
        match crate::store::buffer::PartReader::open(&path) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::io(&path, e)),
        }
    }

    /// Reads an extent into `buf`; false if it is not stored.
    pub fn read_into(&self, hash: &ExtentHash, buf: &mut AlignedBuf) -> Result<bool, StateError> {
        let path = self.extent_path(hash);
        match crate::store::buffer::read_file(&path, buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StateError::io(&path, e)),
        }
    }

    /// Chunk `index` of a stored extent of `len` bytes and its proof (siblings nearest the chunk
    /// first); `None` if the extent is not stored (or is shorter than it should be).
    pub fn prove(&self, hash: &ExtentHash, len: u64, index: u64) -> Result<Option<ChunkProof>, StateError> {
        Ok(self.prove_counting(hash, len, index)?.map(|(proof, _)| proof))
    }

    /// [`Inbound::prove`], also saying how many bytes it read from disk.
    fn prove_counting(&self, hash: &ExtentHash, len: u64, index: u64) -> Result<Option<(ChunkProof, u64)>, StateError> {
        use std::os::unix::fs::FileExt as _;
        let path = self.extent_path(hash);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(&path, e)),
        };
        if index >= proof::chunks(len) {
            return Ok(None);
        }
        let (group_start, group_len) = if len <= proof::GROUP {
            (0, len)
        } else {
            let start = index * proof::CHUNK / proof::GROUP * proof::GROUP;
            (start, (len - start).min(proof::GROUP))
        };
        let mut group = vec![0u8; group_len as usize];
        if file.read_exact_at(&mut group, group_start).is_err() {
            return Ok(None);
        }
        let groups = if len <= proof::GROUP { Vec::new() } else { self.outboard(hash, &path, len)? };
        let siblings = proof::prove(len, index, &group, &groups);
        let from = (index * proof::CHUNK - group_start) as usize;
        let chunk = group[from..from + proof::chunk_len(len, index)].to_vec();
        let read = group_len + 32 * groups.len() as u64;
        Ok(Some(((chunk, siblings), read)))
    }

    /// The raw answer to a challenge's `picks` of the copy whose extents are `hashes`: each
    /// chunk and its proof (up to `depth` levels below the root where the extent splits evenly
    /// there); what is not stored, cannot be read, or is in `unreadable` (what a deliberate
    /// failure pretends), comes back as zeros of the right length, which fails the check. Also
    /// returns how many bytes it read from disk. The caller holds the store's lock, shared.
    pub fn answer(
        &self,
        g: Geometry,
        hashes: &[ExtentHash],
        picks: &[[u64; 2]],
        depth: u32,
        unreadable: &HashSet<ExtentHash>,
    ) -> Result<(Vec<u8>, u64), StateError> {
        let mut raw = Vec::with_capacity(challenge::answer_len(g, picks, depth).unwrap_or(0));
        let mut read = 0;
        for [e, ci] in picks {
            let len = g.len(*e) as u64;
            if *ci >= proof::chunks(len) {
                continue;
            }
            // An extent that cannot be read is as good as missing: its samples fail.
            let proved = match hashes.get(*e as usize).filter(|h| !unreadable.contains(*h)) {
                Some(hash) => self.prove_counting(hash, len, *ci).unwrap_or(None),
                None => None,
            };
            let siblings_len = proof::proof_len_to(len, *ci, depth);
            match proved {
                Some(((chunk, mut siblings), n)) => {
                    read += n;
                    // Nearest the chunk first: what is cut is the part above the tops.
                    siblings.truncate(siblings_len);
                    challenge::encode_item(&mut raw, &chunk, &siblings);
                }
                None => raw.resize(raw.len() + proof::chunk_len(len, *ci) + 32 * siblings_len, 0),
            }
        }
        Ok((raw, read))
    }

    /// The extent's outboard, remade from the extent if missing or not matching its hash.
    fn outboard(&self, hash: &ExtentHash, path: &Path, len: u64) -> Result<Vec<[u8; 32]>, StateError> {
        let ob_path = self.outboard_path(hash);
        if let Ok(bytes) = fs::read(&ob_path) {
            let groups: Vec<[u8; 32]> = bytes.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect();
            if proof::outboard_root(len, &groups).is_some_and(|r| r.as_bytes() == hash) {
                return Ok(groups);
            }
        }
        // The outboard is a cache: remake it from the extent (whose own bytes decide the answer).
        let data = fs::read(path).map_err(|e| StateError::io(path, e))?;
        let (groups, _) = proof::outboard(&data);
        let ob: Vec<u8> = groups.iter().flatten().copied().collect();
        let _ = write_private(&ob_path, &ob);
        Ok(groups)
    }

    /// The committed generation's manifest and extent list, if any.
    pub fn committed(&self) -> Result<Option<CommittedCopy>, StateError> {
        Ok(self.committed_with_receipt()?.map(|(m, list, _)| (m, list)))
    }

    /// The committed generation's manifest alone.
    pub fn committed_manifest(&self) -> Result<Option<Signed<Manifest>>, StateError> {
        let home = crate::store::home::Home::at(&self.dir);
        Ok(home.read_optional::<Committed>(&self.committed_path())?.map(|c| c.manifest))
    }

    /// The committed generation's manifest, extent list, and (in an owner's record) receipt.
    pub fn committed_with_receipt(&self) -> Result<Option<RecordedCopy>, StateError> {
        let path = self.committed_path();
        let Some(c) = crate::store::home::Home::at(&self.dir).read_optional::<Committed>(&path)? else {
            return Ok(None);
        };
        let list_path = self.list_path(c.manifest.body.generation);
        let list = fs::read(&list_path).map_err(|e| StateError::io(&list_path, e))?;
        c.manifest.body.check_list(&list).map_err(|e| StateError::damaged(&list_path, e))?;
        Ok(Some((c.manifest, list, c.receipt)))
    }

    /// Every generation kept, oldest first, the committed (newest) one last: manifest, extent
    /// list and receipt. A `kept/` file of a generation not older than the committed one (a
    /// commit cut short) is not one.
    pub fn generations(&self) -> Result<Vec<RecordedCopy>, StateError> {
        let mut out = Vec::new();
        for (manifest, receipt) in self.manifests()? {
            let list = self.list_of(&manifest)?;
            out.push((manifest, list, receipt));
        }
        Ok(out)
    }

    /// [`Inbound::generations`] without their lists: each kept manifest and its receipt.
    pub fn manifests(&self) -> Result<Vec<KeptManifest>, StateError> {
        let home = crate::store::home::Home::at(&self.dir);
        let Some(newest) = home.read_optional::<Committed>(&self.committed_path())? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for g in self.kept_numbers()? {
            if g >= newest.manifest.body.generation {
                continue;
            }
            let path = self.kept_path(g);
            // Retired meanwhile (by another process, between the listing and the read).
            let Some(c) = home.read_optional::<Committed>(&path)? else { continue };
            if c.manifest.body.generation != g {
                return Err(StateError::damaged(&path, "it holds another generation than its name says"));
            }
            out.push((c.manifest, c.receipt));
        }
        out.push((newest.manifest, newest.receipt));
        Ok(out)
    }

    /// The extent list of a kept generation, checked against its manifest.
    pub fn list_of(&self, manifest: &Signed<Manifest>) -> Result<Vec<u8>, StateError> {
        let list_path = self.list_path(manifest.body.generation);
        let list = fs::read(&list_path).map_err(|e| StateError::io(&list_path, e))?;
        manifest.body.verify_list(&list).map_err(|e| StateError::damaged(&list_path, e))?;
        Ok(list)
    }

    /// The extent list of a kept generation, read from its file a block at a time: what holds
    /// no more than a block of it. [`ListFile::finish`] checks it against its manifest.
    pub fn read_list(&self, manifest: &Signed<Manifest>) -> Result<ListFile, StateError> {
        let path = self.list_path(manifest.body.generation);
        let file = File::open(&path).map_err(|e| StateError::io(&path, e))?;
        let left = manifest.body.extent_count;
        // Its length first: nothing is made of a count the file does not bear out.
        let len = file.metadata().map_err(|e| StateError::io(&path, e))?.len();
        if left.checked_mul(32) != Some(len) {
            return Err(StateError::damaged(&path, ManifestError::List));
        }
        Ok(ListFile {
            file: io::BufReader::with_capacity(64 << 10, file),
            path,
            hasher: list_hasher(),
            left,
            failed: None,
        })
    }

    /// The generations with a `kept/` file, in order.
    pub(crate) fn kept_numbers(&self) -> Result<Vec<u64>, StateError> {
        let mut numbers: Vec<u64> = read_dir_or_empty(&self.kept_dir())?
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter_map(|p| p.file_stem()?.to_str()?.parse().ok())
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// Kept generation `generation`, if kept: read from its own file, not from all of them.
    pub fn kept_generation(&self, generation: u64) -> Result<Option<RecordedCopy>, StateError> {
        let Some(c) = self.committed_record(Some(generation))? else { return Ok(None) };
        let list = self.list_of(&c.manifest)?;
        Ok(Some((c.manifest, list, c.receipt)))
    }

    /// The record of kept generation `generation` (the newest with `None`), if kept.
    fn committed_record(&self, generation: Option<u64>) -> Result<Option<Committed>, StateError> {
        let home = crate::store::home::Home::at(&self.dir);
        let Some(newest) = home.read_optional::<Committed>(&self.committed_path())? else { return Ok(None) };
        let Some(generation) = generation else { return Ok(Some(newest)) };
        Ok(match generation.cmp(&newest.manifest.body.generation) {
            std::cmp::Ordering::Equal => Some(newest),
            std::cmp::Ordering::Greater => None,
            std::cmp::Ordering::Less => match home.read_optional::<Committed>(&self.kept_path(generation))? {
                Some(c) if c.manifest.body.generation == generation => Some(c),
                Some(_) => return Err(StateError::damaged(&self.kept_path(generation), "it holds another generation")),
                None => None,
            },
        })
    }

    /// A kept generation (the newest with `None`): its manifest and receipt, and its extent list
    /// opened to be read a part at a time, its length checked against the manifest (its bytes
    /// are for the reader to check): what a holder sends its owner without holding the list in
    /// memory, a list of up to 64 MiB on every stream the owner opens. Opened under the store's
    /// lock, shared; a commit retiring it meanwhile does not cut it short.
    pub fn open_generation(&self, generation: Option<u64>) -> Result<Option<OpenedCopy>, StateError> {
        let _shared = self.lock(false)?;
        let Some(c) = self.committed_record(generation)? else { return Ok(None) };
        let path = self.list_path(c.manifest.body.generation);
        let list = crate::store::buffer::PartReader::open(&path).map_err(|e| StateError::io(&path, e))?;
        if list.len() != c.manifest.body.extent_count.saturating_mul(32) {
            return Err(StateError::damaged(&path, "its length is not what its manifest says"));
        }
        Ok(Some((c.manifest, c.receipt, list)))
    }

    /// Commits a generation, with the holder's `receipt` of it: every extent it names must be
    /// stored, and the lists of the generations kept with it (its own included, those the
    /// history terms retire once it is the newest not) may take at most `lists_room` bytes: an
    /// owner committing the same list again and again (which costs no history bytes) or naming
    /// one extent thousands of times would otherwise fill the disk with lists nothing counts. Keeps the generation it replaces, then retires what the history `terms` no longer
    /// keep when the generation counts as committed ([`history::committed_at`]), and moves what
    /// no kept generation references to the trash (see [`Inbound::empty_trash`]). Returns the
    /// bytes dropped, and why the retirement after the commit point failed, if it did (the
    /// commit stands). Holds the store's lock exclusively.
    pub fn commit(
        &self,
        manifest: &Signed<Manifest>,
        list: &[u8],
        receipt: Signed<Receipt>,
        terms: Option<&History>,
        lists_room: u64,
    ) -> Result<(u64, Option<StateError>), InboundError> {
        manifest.body.verify_list(list)?;
        let g = manifest.body.geometry()?;
        let _lock = self.lock(true)?;
        // Each extent named is stored, and as long as the geometry says: what the history
        // counts, what the quota allows and what challenges ask of each extent all rest on it.
        let mut missing = 0;
        for (index, hash) in (0u64..).zip(list.chunks_exact(32).filter_map(|h| <&ExtentHash>::try_from(h).ok())) {
            let expected = g.len(index) as u64;
            match fs::metadata(self.extent_path(hash)) {
                Ok(m) if m.is_file() && m.len() == expected => {}
                Ok(m) if m.is_file() => {
                    return Err(InboundError::Length { hash: *hash, index, len: m.len(), expected });
                }
                _ => missing += 1,
            }
        }
        if missing > 0 {
            return Err(InboundError::Missing(missing));
        }
        // Every extent named is on disk under its name already: `put` synced it and its directory.
        let at = history::committed_at(manifest.body.created_at, Some(receipt.body.at));
        let kept = self.lists_kept_with(manifest, list, terms, at, lists_room)?;
        if kept > lists_room {
            return Err(InboundError::Lists { kept, room: lists_room });
        }
        self.commit_point(manifest, list, Some(receipt), terms)?;
        // Committed. What follows only frees space: if it fails (a kept generation's file
        // damaged, the disk failing), the commit stands, and the next commit or prune tries again.
        let freed = self.retire_keeping(terms, at).and_then(|(_, kept, named)| {
            // What the newest names, and what kept older generations name beside it (each
            // looked up where it is: no third list of both).
            let older = Held::new(kept.iter().flat_map(|g| g.extents.iter().map(|(h, _)| *h)).collect());
            drop(kept);
            self.drop_unreferenced(|h| named.contains(h) || older.contains(h))
        });
        Ok(match freed {
            Ok(bytes) => (bytes, None),
            Err(e) => (0, Some(e)),
        })
    }

    /// Bytes of the lists the store would keep once `manifest` (its list `list`, committed at
    /// `at`) is the newest: its own, and those of the generations `terms` still keep beside it,
    /// weighed as the retirement after the commit point weighs them (so that a generation about
    /// to retire never counts). No more than the lists on disk and `list` when those are within
    /// `room` already (then nothing needs weighing). The caller holds the store's lock.
    fn lists_kept_with(
        &self,
        manifest: &Signed<Manifest>,
        list: &[u8],
        terms: Option<&History>,
        at: crate::protocol::time::Timestamp,
        room: u64,
    ) -> Result<u64, StateError> {
        let mut on_disk = list.len() as u64;
        for path in read_dir_or_empty(&self.dir.join("lists"))? {
            on_disk += fs::metadata(&path).map_or(0, |m| m.len());
        }
        if on_disk <= room {
            return Ok(on_disk);
        }
        if terms.is_none() {
            // Nothing is kept beside the newest.
            return Ok(list.len() as u64);
        }
        let manifests = self.manifests()?;
        let sizes: Vec<u64> = manifests.iter().map(|(m, _)| m.body.extent_count.saturating_mul(32)).collect();
        let mut views = self.views_beside(manifests, &Held::from_list(list))?;
        views.push(history::Generation { generation: manifest.body.generation, committed_at: at, extents: Vec::new() });
        let count = history::to_retire(&views, terms, at).min(sizes.len());
        let kept = sizes[count..].iter().sum::<u64>();
        Ok(kept + list.len() as u64)
    }

    /// Writes a generation's list, keeps the committed generation it replaces, then (atomically:
    /// the commit point) writes `committed.json`; then retires what `terms` no longer keep at
    /// `now`, and removes the lists of generations not kept. Returns the generations retired.
    pub fn record(
        &self,
        manifest: &Signed<Manifest>,
        list: &[u8],
        receipt: Option<Signed<Receipt>>,
        terms: Option<&History>,
        now: crate::protocol::time::Timestamp,
    ) -> Result<Vec<u64>, StateError> {
        self.commit_point(manifest, list, receipt, terms)?;
        Ok(self.retire_keeping(terms, now)?.0)
    }

    /// Writes a generation's list, keeps the committed generation it replaces (if `terms` keep
    /// history), then writes `committed.json`: the commit point.
    fn commit_point(
        &self,
        manifest: &Signed<Manifest>,
        list: &[u8],
        receipt: Option<Signed<Receipt>>,
        terms: Option<&History>,
    ) -> Result<(), StateError> {
        let list_path = self.list_path(manifest.body.generation);
        create_dir(list_path.parent().unwrap_or(&self.dir))?;
        write_atomic(&list_path, list)?;
        let home = crate::store::home::Home::at(&self.dir);
        if let Some(current) = home.read_optional::<Committed>(&self.committed_path())?
            && current.manifest.body.generation < manifest.body.generation
            && terms.is_some()
        {
            // Kept before it stops being the committed one: no moment without it. A second name
            // for the same file (the commit point below renames a new file over the first).
            if !self.kept_dir().is_dir() {
                create_dir(&self.kept_dir())?;
                sync_dir(&self.dir)?;
            }
            let kept = self.kept_path(current.manifest.body.generation);
            remove_file(&kept)?;
            // A file system without hard links gets a copy.
            match fs::hard_link(self.committed_path(), &kept) {
                Ok(()) => sync_dir(&self.kept_dir())?,
                Err(_) => home.write(&kept, &current)?,
            }
        }
        let committed = Committed { schema: Schema, manifest: manifest.clone(), receipt };
        home.write(&self.committed_path(), &committed)
    }

    /// Retires the generations `terms` no longer keep at `now` (oldest first, never the
    /// committed one): removes their `kept/` files, then every list no kept generation owns.
    /// Extents are left to the caller ([`Inbound::drop_unreferenced`]). Returns the generations
    /// retired and those kept.
    fn retire_keeping(
        &self,
        terms: Option<&History>,
        now: crate::protocol::time::Timestamp,
    ) -> Result<(Vec<u64>, Vec<history::Generation>, Held), StateError> {
        // The newest's extents once, and of each older generation, read one list at a time,
        // only what the newest does not name: what the rule weighs, and no more.
        let mut manifests = self.manifests()?;
        let Some((newest, newest_receipt)) = manifests.pop() else { return Ok(Default::default()) };
        let named = self.read_list(&newest)?.held(&newest)?;
        let mut views = self.views_beside(manifests, &named)?;
        let committed_at = history::committed_at(newest.body.created_at, newest_receipt.map(|r| r.body.at));
        views.push(history::Generation { generation: newest.body.generation, committed_at, extents: Vec::new() });
        let count = history::to_retire(&views, terms, now);
        let retired: Vec<u64> = views[..count].iter().map(|g| g.generation).collect();
        for g in &retired {
            remove_file(&self.kept_path(*g))?;
        }
        if !retired.is_empty() {
            sync_dir(&self.kept_dir())?;
        }
        let kept: HashSet<u64> = views[count..].iter().map(|g| g.generation).collect();
        for path in read_dir_or_empty(&self.kept_dir())? {
            let g = path.file_stem().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok());
            if !g.is_some_and(|g| kept.contains(&g)) {
                remove_file(&path)?;
            }
        }
        for path in read_dir_or_empty(&self.dir.join("lists"))? {
            let g = path.file_stem().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok());
            if !g.is_some_and(|g| kept.contains(&g)) {
                remove_file(&path)?;
            }
        }
        Ok((retired, views.split_off(count), named))
    }

    /// `generations` (kept manifests and receipts) as the history's rules weigh them beside a
    /// newest generation naming `newest` ([`history::beside_newest`]), their lists read one at a
    /// time.
    pub fn views_beside(
        &self,
        generations: Vec<KeptManifest>,
        newest: &Held,
    ) -> Result<Vec<history::Generation>, StateError> {
        let mut views = Vec::with_capacity(generations.len());
        for (manifest, receipt) in generations {
            let mut list = self.read_list(&manifest)?;
            let m = &manifest.body;
            let g = m.geometry().map_err(|e| StateError::damaged(&self.list_path(m.generation), e))?;
            let extents = list.by_ref().enumerate().map(|(i, h)| (h, g.len(i as u64) as u64));
            let at = history::committed_at(m.created_at, receipt.as_ref().map(|r| r.body.at));
            let view = history::beside_newest(m.generation, at, extents, newest);
            list.finish(&manifest)?;
            views.push(view);
        }
        Ok(views)
    }

    /// Retires every kept generation older than `generation` (never the committed one), as
    /// `Inbound::retire_keeping` does. The caller holds the store's lock exclusively.
    pub fn forget_older(&self, generation: u64) -> Result<(), StateError> {
        for g in self.kept_numbers()? {
            if g < generation {
                remove_file(&self.kept_path(g))?;
                remove_file(&self.list_path(g))?;
            }
        }
        Ok(())
    }

    /// Every extent some kept generation names.
    pub(crate) fn kept_extents(&self) -> Result<Held, StateError> {
        let mut manifests = self.manifests()?;
        let Some((newest, _)) = manifests.pop() else { return Ok(Held::default()) };
        let named = self.read_list(&newest)?.held(&newest)?;
        let beside = self.views_beside(manifests, &named)?;
        let keep = named.iter().copied().chain(beside.iter().flat_map(|g| g.extents.iter().map(|(h, _)| *h)));
        Ok(Held::new(keep.collect()))
    }

    /// Moves the extents `keep` does not keep, and temp files, to the trash. Returns the bytes
    /// moved.
    /// Renames are quick where deleting a large file is not (some 1.3 ms per 4 MiB extent
    /// here), so a commit does not wait for it.
    pub fn drop_unreferenced(&self, keep: impl Fn(&ExtentHash) -> bool) -> Result<u64, StateError> {
        let mut freed = 0;
        let trash = self.trash_dir();
        create_dir(&trash)?;
        for sub in read_dir_or_empty(&self.extents_dir())? {
            for path in read_dir_or_empty(&sub)? {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let stem = name.strip_suffix(".ob").unwrap_or(name);
                let referenced = encoding::hex_decode::<32>(stem).is_ok_and(|h| keep(&h));
                if !referenced {
                    freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    match fs::rename(&path, trash.join(name)) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(StateError::io(&path, e)),
                        _ => {}
                    }
                }
            }
        }
        Ok(freed)
    }

    fn trash_dir(&self) -> PathBuf {
        self.dir.join("trash")
    }

    /// Deletes what [`Inbound::drop_unreferenced`] moved to the trash. Safe to repeat, and to
    /// run beside pushes and commits (nothing in the trash is ever needed again).
    pub fn empty_trash(&self) -> Result<(), StateError> {
        for path in read_dir_or_empty(&self.trash_dir())? {
            remove_file(&path)?;
        }
        Ok(())
    }

    /// Checks every extent of the kept generations against its hash, as a holder does when
    /// its peer says it failed a challenge; moves those that are missing, unreadable or wrong
    /// to the trash, so the owner's next push sends them again (those only older generations
    /// name stay lost: the owner's challenges of those generations say so). Returns how many it
    /// found bad.
    pub fn scrub(&self) -> Result<usize, StateError> {
        let unique = self.kept_extents()?;
        let trash = self.trash_dir();
        let mut bad = 0;
        let good =
            |path: &Path, hash: &ExtentHash| fs::read(path).is_ok_and(|data| blake3::hash(&data).as_bytes() == hash);
        for hash in unique.iter() {
            let path = self.extent_path(hash);
            if !good(&path, hash) {
                // Briefly exclusive: an answer under way sees the extent or its absence, whole;
                // and looked at again under the lock, as a push may have just sent it again.
                let _lock = self.lock(true)?;
                if good(&path, hash) {
                    continue;
                }
                bad += 1;
                create_dir(&trash)?;
                for p in [path.clone(), self.outboard_path(hash)] {
                    let name = p.file_name().map(|n| n.to_owned()).unwrap_or_default();
                    match fs::rename(&p, trash.join(name)) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(StateError::io(&p, e)),
                        _ => {}
                    }
                }
            }
        }
        Ok(bad)
    }

    /// Files of this store that no kept generation needs and that are older than `before`:
    /// extents (and their outboards) of interrupted pushes, temp files (beside extents, lists,
    /// `committed.json` and in `kept/`), lists of generations not kept, a trash a server did not
    /// get to empty. With their sizes.
    pub fn leftovers(&self, before: std::time::SystemTime) -> Result<Vec<(PathBuf, u64)>, StateError> {
        let generations = self.generations()?;
        let kept: HashSet<u64> = generations.iter().map(|(m, _, _)| m.body.generation).collect();
        let mut keep: HashSet<ExtentHash> = HashSet::new();
        for (m, list, _) in &generations {
            keep.extend(m.body.check_list(list).map_err(|e| StateError::damaged(&self.dir, e))?);
        }
        let mut out = Vec::new();
        let mut consider = |path: PathBuf| -> Result<(), StateError> {
            // A file gone meanwhile (a trash being emptied) is no leftover.
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(StateError::io(&path, e)),
            };
            if meta.modified().is_ok_and(|m| m < before) {
                out.push((path, meta.len()));
            }
            Ok(())
        };
        for sub in read_dir_or_empty(&self.extents_dir())? {
            for path in read_dir_or_empty(&sub)? {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let stem = name.strip_suffix(".ob").unwrap_or(name);
                if !encoding::hex_decode::<32>(stem).is_ok_and(|h| keep.contains(&h)) {
                    consider(path)?;
                }
            }
        }
        for path in read_dir_or_empty(&self.dir.join("lists"))? {
            let g = path.file_stem().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok());
            if !g.is_some_and(|g| kept.contains(&g)) {
                consider(path)?;
            }
        }
        for path in read_dir_or_empty(&self.trash_dir())? {
            consider(path)?;
        }
        // Temp files of an interrupted write of the generations' records (`committed.json`,
        // `kept/`): named `.NAME.PID.N.tmp`.
        for dir in [self.dir.clone(), self.kept_dir()] {
            for path in read_dir_or_empty(&dir)? {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name.starts_with('.') && name.ends_with(".tmp") && path.is_file() {
                    consider(path)?;
                }
            }
        }
        Ok(out)
    }

    /// Bytes the store takes on disk (extents, outboards, lists).
    pub fn size_on_disk(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(dir) else { return 0 };
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        }
        walk(&self.dir)
    }

    /// Removes [`Inbound::leftovers`] older than `before`, found again under the store's lock
    /// (so a commit since the plan was made never loses an extent it now names). Returns the
    /// bytes freed.
    pub fn remove_leftovers(&self, before: std::time::SystemTime) -> Result<u64, StateError> {
        let _lock = self.lock(true)?;
        let mut freed = 0;
        for (path, len) in self.leftovers(before)? {
            remove_file(&path)?;
            freed += len;
        }
        Ok(freed)
    }

    /// Removes the whole store (its data is owed no longer), holding its lock: an answer under
    /// way finishes first. Safe to repeat.
    pub fn remove_all(&self) -> Result<(), StateError> {
        let _lock = if self.dir.exists() { self.lock(true)? } else { None };
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StateError::io(&self.dir, e)),
            _ => Ok(()),
        }
    }
}

/// A kept generation's extent list being read from its file ([`Inbound::read_list`]): each hash
/// in order. Only [`ListFile::finish`], once all are read, says whether it was the list its
/// manifest names; what was made of it before is to be thrown away if not.
#[derive(Debug)]
pub struct ListFile {
    file: io::BufReader<File>,
    path: PathBuf,
    hasher: blake3::Hasher,
    left: u64,
    failed: Option<io::Error>,
}

impl Iterator for ListFile {
    type Item = ExtentHash;

    fn next(&mut self) -> Option<ExtentHash> {
        use io::Read as _;
        if self.left == 0 {
            return None;
        }
        let mut hash = [0u8; 32];
        match self.file.read_exact(&mut hash) {
            Ok(()) => {
                self.hasher.update(&hash);
                self.left -= 1;
                Some(hash)
            }
            Err(e) => {
                (self.failed, self.left) = (Some(e), 0);
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.left).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl ListFile {
    /// Reads what is left, and checks the whole was `manifest`'s list.
    pub fn finish(mut self, manifest: &Signed<Manifest>) -> Result<(), StateError> {
        use io::Read as _;
        self.by_ref().for_each(drop);
        if let Some(e) = self.failed.take() {
            return Err(StateError::io(&self.path, e));
        }
        let mut more = [0u8; 1];
        let beyond = self.file.read(&mut more).map_err(|e| StateError::io(&self.path, e))?;
        let len = manifest.body.extent_count.saturating_mul(32).saturating_add(beyond as u64);
        manifest
            .body
            .verify_list_hash(len, self.hasher.finalize().as_bytes())
            .map_err(|e| StateError::damaged(&self.path, e))
    }

    /// The whole list as a [`Held`], checked.
    pub fn held(mut self, manifest: &Signed<Manifest>) -> Result<Held, StateError> {
        let held = Held::new(self.by_ref().collect());
        self.finish(manifest)?;
        Ok(held)
    }
}

/// A kept generation as the history rules see it: its number, when it counts as committed
/// ([`history::committed_at`]), its extents and their lengths.
pub fn view((manifest, list, receipt): &RecordedCopy) -> Result<history::Generation, StateError> {
    let m = &manifest.body;
    let damaged = |e: ManifestError| StateError::damaged(std::path::Path::new("the extent list"), e);
    let g = m.geometry().map_err(damaged)?;
    let hashes = m.check_list(list).map_err(damaged)?;
    Ok(history::Generation {
        generation: m.generation,
        committed_at: history::committed_at(m.created_at, receipt.as_ref().map(|r| r.body.at)),
        extents: hashes.into_iter().enumerate().map(|(i, h)| (h, g.len(i as u64) as u64)).collect(),
    })
}

/// An extent written to a temp file by [`Inbound::write`], not yet in its place: dropped
/// without [`Written::sync`], its temp file is removed. (No temp file, if the extent was in
/// place already: the sync then syncs its name only.)
#[derive(Debug)]
#[must_use = "an extent is stored only once it is synced"]
pub struct Written {
    /// The temp file and its name; `None` if the extent was in place already.
    temp: Option<(File, PathBuf)>,
    path: PathBuf,
    names: Names,
}

/// The directories a [`Written`] syncs: the extent's, and those above it when a write may have
/// just made the extent's directory (this one, or another a moment ago that has not synced them
/// yet); then what to remember as durable.
#[derive(Debug)]
struct Names {
    dirs: Vec<PathBuf>,
    learn: Vec<DirKey>,
}

/// What a directory is: its device, inode and birth time (a directory removed and made again
/// at the same path is another one, even if it gets the same inode number).
type DirKey = (u64, u64, std::time::SystemTime);

/// Directories of a store (`extents` and `extents/ab`) whose names are durable up to the storage
/// folder: once a write in this process has synced the directories above one, later writes
/// into it sync only it, and a write into a new `extents/ab` only it and `extents` (every sync
/// of a directory costs the disk a flush, even with nothing new in it: a first push of 1 GiB
/// synced 866 directories before `extents` was remembered too). On a file system that keeps no
/// birth time, every write syncs them all. At most 257 a store written since the process began.
static DURABLE_DIRS: LazyLock<Mutex<HashSet<DirKey>>> = LazyLock::new(Mutex::default);

fn dir_key(dir: &Path) -> Option<DirKey> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(dir).ok()?;
    Some((meta.dev(), meta.ino(), meta.created().ok()?))
}

impl Written {
    /// Syncs the extent's bytes, renames it into place and syncs its name: the name is durable
    /// before the holder says "stored" (a commit relies on it). An extent found in place
    /// already has its name synced too: another write of it may have renamed it a moment ago,
    /// or failed to sync its directory.
    pub fn sync(mut self) -> Result<(), InboundError> {
        if let Some((file, tmp)) = self.temp.take()
            && let Err(e) = file.sync_data().and_then(|()| fs::rename(&tmp, &self.path))
        {
            let _ = fs::remove_file(&tmp);
            return Err(InboundError::State(StateError::io(&self.path, e)));
        }
        for d in &self.names.dirs {
            sync_dir(d)?;
        }
        if !self.names.learn.is_empty()
            && let Ok(mut known) = DURABLE_DIRS.lock()
        {
            known.extend(self.names.learn.drain(..));
        }
        Ok(())
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if let Some((_, tmp)) = self.temp.take() {
            let _ = fs::remove_file(&tmp);
        }
    }
}

/// Writes a file readable by its owner only (a cache: not synced).
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?.write_all(bytes)
}

fn next_tmp() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub(super) fn read_dir_or_empty(dir: &Path) -> Result<Vec<PathBuf>, StateError> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.path()).map_err(|e| StateError::io(dir, e))).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StateError::io(dir, e)),
    }
}

pub(super) fn remove_file(path: &Path) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StateError::io(path, e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StateError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::challenge::{Rng, check, pick};

    fn extent(i: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng::from_seed([i as u8; 32]);
        (0..len).map(|_| rng.below(256) as u8).collect()
    }

    /// A write syncs the directories above its extent's, up to the storage folder, until a write
    /// has synced them in this process; a new directory beside is then synced with `extents`
    /// alone (two writes into it at once both sync the two); a store removed and made again is
    /// synced from the top again (two first writes at once into two new directories both sync
    /// them all). Without birth times, every write syncs them all.
    #[test]
    fn a_write_syncs_the_directories_above_its_extent_until_their_names_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Inbound { dir: dir.path().join("store") };
        // Extents in pairs that share a directory (`extents/ab`), by their hashes' first byte.
        let mut by_dir: std::collections::HashMap<u8, Vec<(ExtentHash, Vec<u8>)>> = Default::default();
        let mut pairs = Vec::new();
        for i in 0.. {
            let data = extent(i, 1024);
            let hash = *blake3::hash(&data).as_bytes();
            let same = by_dir.entry(hash[0]).or_default();
            same.push((hash, data));
            if same.len() == 2 {
                pairs.push(std::mem::take(same));
                if pairs.len() == 2 {
                    break;
                }
            }
        }
        let top = store.dir.clone();
        let all = |h: &ExtentHash| {
            let ab = top.join("extents").join(&encoding::hex_encode(h)[..2]);
            vec![ab, top.join("extents"), top.clone(), dir.path().to_owned(), dir.path().parent().unwrap().to_owned()]
        };
        let synced = |w: &Written| w.names.dirs.len();
        let [(h1, e1), (h2, e2)] = <[_; 2]>::try_from(pairs.remove(0)).unwrap();
        let [(h3, e3), (h4, e4)] = <[_; 2]>::try_from(pairs.remove(0)).unwrap();

        let first = store.write(&h1, &e1).unwrap();
        assert_eq!(first.names.dirs, all(&h1), "the extent's directory and all above it");
        let birth = fs::metadata(first.path.parent().unwrap()).unwrap().created().is_ok();
        let after = if birth { 1 } else { 5 };
        first.sync().unwrap();
        let second = store.write(&h2, &e2).unwrap();
        assert_eq!(second.names.dirs[..], all(&h2)[..after]);
        second.sync().unwrap();
        let again = store.write(&h1, &e1).unwrap();
        assert_eq!((again.temp.is_none(), synced(&again)), (true, after));
        again.sync().unwrap();

        // A new directory beside: it and `extents`, whose own name is durable by now.
        let (third, fourth) = (store.write(&h3, &e3).unwrap(), store.write(&h4, &e4).unwrap());
        let beside_new = if birth { 2 } else { 5 };
        assert_eq!(third.names.dirs[..], all(&h3)[..beside_new], "neither has synced its directory yet");
        assert_eq!(fourth.names.dirs[..], all(&h4)[..beside_new]);
        fourth.sync().unwrap();
        third.sync().unwrap();
        let into_it = store.write(&h3, &e3).unwrap();
        assert_eq!(synced(&into_it), after);
        into_it.sync().unwrap();

        // Made again, two first writes at once into two new folders: neither has synced
        // `extents` and those above yet, so both sync them all.
        store.remove_all().unwrap();
        let (made_again, other) = (store.write(&h2, &e2).unwrap(), store.write(&h3, &e3).unwrap());
        assert_eq!((made_again.names.dirs.clone(), other.names.dirs.clone()), (all(&h2), all(&h3)));
        other.sync().unwrap();
        made_again.sync().unwrap();
        let beside = store.write(&h1, &e1).unwrap();
        assert_eq!(synced(&beside), after);
        beside.sync().unwrap();
        assert!(store.has(&h1) && store.has(&h2) && store.has(&h3));
    }

    /// A holder that lost 10% of the extents fails a default challenge in at least 99% of runs;
    /// one that overwrote them likewise; an honest one always passes.
    #[test]
    fn a_holder_missing_ten_percent_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = Inbound { dir: dir.path().to_owned() };
        let g = Geometry::new(100 * 65_536 - 3_000, 65_536).unwrap();
        let depth = proof::TOP_LEVELS;
        let (hashes, tops): (Vec<ExtentHash>, Vec<Vec<[u8; 32]>>) = (0..g.count())
            .map(|i| {
                let data = extent(i, g.len(i));
                let (hash, tops) = proof::hash_with_tops(&data, depth);
                store.put(hash.as_bytes(), &data).unwrap();
                (*hash.as_bytes(), tops)
            })
            .unzip();
        let runs = 1_000;
        let caught = |store: &Inbound| {
            (0..runs)
                .filter(|i| {
                    let mut rng = Rng::from_seed(blake3::hash(&u64::to_le_bytes(*i)).into());
                    let picks = pick(g, challenge::DEFAULT_SAMPLES, &mut rng);
                    let (raw, _) = store.answer(g, &hashes, &picks, depth, &HashSet::new()).unwrap();
                    let tops = challenge::tops_for(g, &hashes, &picks, depth, |e| Some(tops[e as usize].clone()));
                    check(g, &hashes, &picks, &raw, depth, &tops.unwrap()) > 0
                })
                .count()
        };
        assert_eq!(caught(&store), 0, "an honest holder passes");
        // Lose 10 of the 100 extents: 5 deleted, 5 overwritten with other bytes.
        for (n, hash) in hashes.iter().enumerate().filter(|(n, _)| n % 10 == 3) {
            let path = store.extent_path(hash);
            if n < 50 {
                fs::remove_file(&path).unwrap();
            } else {
                fs::write(&path, extent(1_000 + n as u64, g.len(n as u64))).unwrap();
            }
        }
        let caught = caught(&store);
        assert!(caught * 100 >= runs as usize * 99, "caught {caught} of {runs}");
    }

    /// A commit moves what the new generation does not name to the trash at once (it is no
    /// longer offered to a push) and deletes it later; a trash left behind is a leftover.
    #[test]
    fn a_commit_trashes_what_it_no_longer_needs() {
        use crate::protocol::identity::Identity;
        use crate::protocol::manifest::{encode_list, list_hash};
        let dir = tempfile::tempdir().unwrap();
        let store = Inbound { dir: dir.path().to_owned() };
        let (old, new) = (extent(1, 8192), extent(2, 8192));
        let (old_hash, new_hash) = (*blake3::hash(&old).as_bytes(), *blake3::hash(&new).as_bytes());
        store.put(&old_hash, &old).unwrap();
        store.put(&new_hash, &new).unwrap();
        let owner = Identity::from_seed([9; 32]);
        let list = encode_list(&[new_hash]);
        let manifest = Manifest {
            contract: "55".repeat(32).parse().unwrap(),
            owner: owner.node_id(),
            generation: 1,
            volume_size: 8192,
            extent_size: 8192,
            extent_count: 1,
            extents: encoding::hex_encode(&list_hash(&list)),
            created_at: "2026-11-29T10:00:00Z".parse().unwrap(),
        };
        let manifest = Signed::sign(manifest, &owner).unwrap();
        let receipt = Receipt {
            contract: manifest.body.contract,
            owner: owner.node_id(),
            holder: owner.node_id(),
            generation: 1,
            manifest: RecordId::of(&manifest.body).unwrap(),
            at: manifest.body.created_at,
        };
        let (freed, unretired) =
            store.commit(&manifest, &list, Signed::sign(receipt, &owner).unwrap(), None, u64::MAX).unwrap();
        assert!(unretired.is_none());
        assert_eq!(freed, 8192);
        assert_eq!(store.present().unwrap(), vec![(new_hash, 8192)]);
        assert_eq!(fs::read_dir(store.trash_dir()).unwrap().count(), 1);
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        assert!(store.leftovers(later).unwrap().iter().any(|(p, _)| p.starts_with(store.trash_dir())));
        store.empty_trash().unwrap();
        assert_eq!(fs::read_dir(store.trash_dir()).unwrap().count(), 0);
        assert!(store.leftovers(later).unwrap().is_empty());
        assert!(store.read_into(&new_hash, &mut AlignedBuf::default()).unwrap(), "what it names stays");
    }

    /// A scrub finds what is missing or wrong, and moves it aside so that the owner's next
    /// push sends it again; what is right stays.
    #[test]
    fn a_scrub_removes_what_no_longer_matches() {
        use crate::protocol::identity::Identity;
        use crate::protocol::manifest::{encode_list, list_hash};
        let dir = tempfile::tempdir().unwrap();
        let store = Inbound { dir: dir.path().to_owned() };
        let data: Vec<Vec<u8>> = (0..4).map(|i| extent(i, 8192)).collect();
        let hashes: Vec<ExtentHash> = data.iter().map(|d| *blake3::hash(d).as_bytes()).collect();
        for (h, d) in hashes.iter().zip(&data) {
            store.put(h, d).unwrap();
        }
        let owner = Identity::from_seed([8; 32]);
        let list = encode_list(&hashes);
        let manifest = Manifest {
            contract: "66".repeat(32).parse().unwrap(),
            owner: owner.node_id(),
            generation: 1,
            volume_size: 4 * 8192,
            extent_size: 8192,
            extent_count: 4,
            extents: encoding::hex_encode(&list_hash(&list)),
            created_at: "2026-11-29T10:00:00Z".parse().unwrap(),
        };
        let manifest = Signed::sign(manifest, &owner).unwrap();
        store.record(&manifest, &list, None, None, manifest.body.created_at).unwrap();
        assert_eq!(store.scrub().unwrap(), 0);
        fs::write(store.extent_path(&hashes[1]), extent(99, 8192)).unwrap();
        fs::remove_file(store.extent_path(&hashes[2])).unwrap();
        assert_eq!(store.scrub().unwrap(), 2);
        let mut left: Vec<ExtentHash> = store.present().unwrap().into_iter().map(|(h, _)| h).collect();
        left.sort_unstable();
        let mut want = vec![hashes[0], hashes[3]];
        want.sort_unstable();
        assert_eq!(left, want);
    }

    /// An extent cut short on the disk is replaced by a put of its bytes; one stored whole is
    /// left as it is.
    #[test]
    fn a_put_replaces_an_extent_stored_at_another_length() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Inbound { dir: dir.path().to_owned() };
        let data = extent(5, 3 * 4096);
        let hash = *blake3::hash(&data).as_bytes();
        store.put(&hash, &data).unwrap();
        let path = store.extent_path(&hash);
        let inode = fs::metadata(&path).unwrap().ino();
        store.put(&hash, &data).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "whole: not written again");
        File::options().write(true).open(&path).unwrap().set_len(4096).unwrap();
        store.put(&hash, &data).unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(store.put(&hash, &extent(6, 3 * 4096)).is_err(), "other bytes under its name are still refused");
        assert_eq!(fs::read(&path).unwrap(), data);
    }

    #[test]
    fn a_lost_outboard_is_remade() {
        let dir = tempfile::tempdir().unwrap();
        let store = Inbound { dir: dir.path().to_owned() };
        let data = extent(7, 100_000);
        let hash = *blake3::hash(&data).as_bytes();
        store.put(&hash, &data).unwrap();
        let (chunk, siblings) = store.prove(&hash, 100_000, 50).unwrap().unwrap();
        fs::write(store.outboard_path(&hash), b"garbage").unwrap();
        assert_eq!(store.prove(&hash, 100_000, 50).unwrap().unwrap(), (chunk.clone(), siblings.clone()));
        assert!(proof::verify(100_000, 50, &chunk, &siblings, &hash));
    }

    /// An extent written and not synced is not stored, and leaves no temp file behind when
    /// dropped (a push that failed in between); written and synced, it is stored and reads back
    /// as written, although the buffer it came from (aligned, as a server's are: written
    /// straight to the device where the file system allows it) was reused meanwhile; written
    /// again once stored, it stays as it is.
    #[test]
    fn a_written_extent_is_stored_only_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Inbound { dir: dir.path().to_owned() };
        let pool = crate::store::buffer::Pool::new(1);
        let mut data = pool.take_or_new();
        let bytes = extent(8, 4 << 20);
        data.set_len(bytes.len());
        data.copy_from_slice(&bytes);
        let hash = *blake3::hash(&bytes).as_bytes();
        let temps = |store: &Inbound| {
            let mut names = Vec::new();
            for d in read_dir_or_empty(&store.extents_dir()).unwrap() {
                for f in read_dir_or_empty(&d).unwrap() {
                    names.push(f.file_name().unwrap().to_string_lossy().into_owned());
                }
            }
            names.into_iter().filter(|n| n.ends_with(".tmp")).count()
        };
        drop(store.write(&hash, &data).unwrap());
        assert!(!store.has(&hash));
        assert_eq!(temps(&store), 0, "a dropped write leaves no temp file");

        let written = store.write(&hash, &data).unwrap();
        assert!(!store.has(&hash), "not stored before the sync");
        assert_eq!(temps(&store), 1);
        data.fill(0);
        drop(data);
        written.sync().unwrap();
        assert!(store.has(&hash));
        assert_eq!(temps(&store), 0);
        assert_eq!(fs::read(store.extent_path(&hash)).unwrap(), bytes);
        store.write(&hash, &bytes).unwrap().sync().unwrap();
        assert_eq!(temps(&store), 0);
        assert_eq!(fs::read(store.extent_path(&hash)).unwrap(), bytes);
        assert!(matches!(store.write(&[0; 32], &bytes), Err(InboundError::HashMismatch(_))));
    }
}
