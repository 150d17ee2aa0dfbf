//! The owner's record of its copy at a peer: `<home>/outbound/<contract>/`, laid out like a holder's
//! store (`committed.json`, `kept/`, `lists/<gen>.bin`) without the extents, with the owner's caches
//! beside it: the volume's marks (`volume-marks-<gen>.bin`: a push sends only what changed) and each
//! extent's tops (`tops-<gen>.bin`: shorter challenge proofs). And [`Target`], read from it.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::challenge::Receipt;
use crate::protocol::history::History;
use crate::protocol::manifest::Manifest;
use crate::protocol::push::Shape;
use crate::protocol::record::{RecordId, Signed};
use crate::protocol::time::Timestamp;
use crate::store::home::{Home, Schema, StateError, create_dir, write_atomic};
use crate::store::inbound::{CommittedCopy, Inbound, KeptManifest, RecordedCopy, read_dir_or_empty, remove_file};
use crate::store::node::Node;

/// What a challenge asks about: a manifest of ours that the holder committed, and what the
/// answer is checked against.
#[derive(Debug, Clone)]
pub struct Target {
    /// The owner-signed manifest.
    pub manifest: Signed<Manifest>,
    /// Its extent list.
    pub list: Vec<u8>,
    /// The holder's receipt of it, if this node has it.
    pub receipt: Option<Signed<Receipt>>,
    /// Every extent's tops, when this node kept them for this generation.
    pub tops: Option<Vec<[u8; 32]>>,
    /// For an older generation: the extents (indexes) the newest does not share, which its
    /// challenges sample. `None`: the whole copy.
    pub only: Option<Vec<u64>>,
}

pub use crate::protocol::history::CLOCK_SLACK_SECS;

impl Target {
    /// This node's record of what the holder of `id` last committed.
    pub fn from_record(node: &Node, id: &RecordId) -> Result<Option<Target>, StateError> {
        let record = Outbound::at(node.home.root(), id);
        // Under the record's lock, shared: a push may be replacing it.
        let _shared = record.lock(false)?;
        Ok(record.committed_with_receipt()?.map(|(manifest, list, receipt)| {
            let tops = record.tops(manifest.body.generation);
            Target { manifest, list, receipt, tops, only: None }
        }))
    }

    /// What this node may challenge the holder of `id` about at `now`: every generation the
    /// holder committed that the contract's history `terms` still keep [`CLOCK_SLACK_SECS`]
    /// from now, oldest first, the newest last (the record retires by space as the holder does,
    /// at each commit; what runs out by time is left out here). As (generation, manifest id).
    pub fn choices(
        node: &Node,
        id: &RecordId,
        terms: Option<&History>,
        now: Timestamp,
    ) -> Result<Vec<(u64, RecordId)>, StateError> {
        let record = Outbound::at(node.home.root(), id);
        let _shared = record.lock(false)?;
        let kept = record.layout.manifests()?;
        let times: Vec<Timestamp> = kept
            .iter()
            .map(|(m, r)| crate::protocol::history::committed_at(m.body.created_at, r.as_ref().map(|r| r.body.at)))
            .collect();
        let expired = crate::protocol::history::expired(&times, terms, now.plus_secs(CLOCK_SLACK_SECS));
        let n = kept.len();
        kept.into_iter()
            .enumerate()
            .skip(expired)
            // Older generations are asked about only with the holder's receipt of them.
            .filter(|(i, (_, r))| *i + 1 == n || r.is_some())
            .map(|(_, (m, _))| {
                Ok((m.body.generation, RecordId::of(&m.body).map_err(|e| StateError::damaged(record.layout.dir(), e))?))
            })
            .collect()
    }

    /// The target for generation `generation` of this node's record of `id`, if kept. An older
    /// generation samples only the extents the next kept one does not share (`None` if it
    /// shares them all): each extent of the history is in at least one such set (that of the
    /// newest generation naming it), and what only one generation names is in its own, so a
    /// holder that drops any part of the history fails that generation's challenges. The owner
    /// keeps each older generation's extent list (32 bytes per extent) and the tops of its own
    /// extents only (136 bytes each): proofs as short as the newest's, for what changed.
    pub fn of_generation(node: &Node, id: &RecordId, generation: u64) -> Result<Option<Target>, StateError> {
        let record = Outbound::at(node.home.root(), id);
        let _shared = record.lock(false)?;
        let Some((manifest, list, receipt)) = record.layout.kept_generation(generation)? else { return Ok(None) };
        let newest = record.layout.committed_manifest()?.map_or(generation, |m| m.body.generation);
        if generation == newest {
            let tops = record.tops(generation);
            return Ok(Some(Target { manifest, list, receipt, tops, only: None }));
        }
        let next = record.layout.kept_numbers()?.into_iter().filter(|g| (generation + 1..newest).contains(g)).min();
        let Some((next, next_list, _)) = record.layout.kept_generation(next.unwrap_or(newest))? else {
            return Ok(None);
        };
        let damaged = |e| StateError::damaged(record.layout.dir(), e);
        let hashes = manifest.body.check_list(&list).map_err(damaged)?;
        let next_hashes = next.body.check_list(&next_list).map_err(damaged)?;
        let only = crate::protocol::history::only_in(&hashes, &next_hashes);
        let tops = record.older_tops(generation, hashes.len());
        Ok((!only.is_empty()).then_some(Target { manifest, list, receipt, tops, only: Some(only) }))
    }

    /// The generation the target is of.
    pub fn generation(&self) -> u64 {
        self.manifest.body.generation
    }
}

/// `shape.json`: what the volume looked like at the last push the holder committed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapeFile {
    schema: Schema,
    shape: Shape,
}

/// The owner's record of its copy under one contract.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The holder's layout, which the record shares.
    layout: Inbound,
}

impl Outbound {
    /// The record of `contract` in the state directory `home`.
    pub fn at(home: &Path, contract: &RecordId) -> Self {
        Outbound { layout: Inbound::at_dir(&home.join("outbound").join(contract.to_string())) }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        self.layout.dir()
    }

    /// Takes the record's lock: shared to read it, exclusive to replace it (see [`Inbound::lock`]).
    pub fn lock(&self, exclusive: bool) -> Result<Option<fs::File>, StateError> {
        self.layout.lock(exclusive)
    }

    /// The manifest the holder last committed and its list, if any.
    pub fn committed(&self) -> Result<Option<CommittedCopy>, StateError> {
        self.layout.committed()
    }

    /// The same, with the holder's receipt of it when this node has one.
    pub fn committed_with_receipt(&self) -> Result<Option<RecordedCopy>, StateError> {
        self.layout.committed_with_receipt()
    }

    /// Records a generation the holder committed, and retires from the record what the history
    /// `terms` let the holder retire at `now` ([`Inbound::record`]: run at the receipt's time, the
    /// holder's own rule on the same generations, so both sides keep the same). The ones retired.
    pub fn record(
        &self,
        manifest: &Signed<Manifest>,
        list: &[u8],
        receipt: Option<Signed<Receipt>>,
        terms: Option<&History>,
        now: Timestamp,
    ) -> Result<Vec<u64>, StateError> {
        let retired = self.layout.record(manifest, list, receipt, terms, now)?;
        self.drop_older_tops()?;
        Ok(retired)
    }

    /// [`Outbound::generations`] without their lists.
    pub fn manifests(&self) -> Result<Vec<KeptManifest>, StateError> {
        self.layout.manifests()
    }

    /// `generations` as the history's rules weigh them beside a newest generation naming
    /// `newest` ([`Inbound::views_beside`]).
    pub fn views_beside(
        &self,
        generations: Vec<KeptManifest>,
        newest: &crate::protocol::push::Held,
    ) -> Result<Vec<crate::protocol::history::Generation>, StateError> {
        self.layout.views_beside(generations, newest)
    }

    /// A kept generation's extent list, read a block at a time ([`Inbound::read_list`]).
    pub fn read_list(&self, manifest: &Signed<Manifest>) -> Result<crate::store::inbound::ListFile, StateError> {
        self.layout.read_list(manifest)
    }

    /// Every generation recorded as kept by the holder, oldest first, the newest last.
    pub fn generations(&self) -> Result<Vec<RecordedCopy>, StateError> {
        self.layout.generations()
    }

    /// Forgets generation `generation` and every older one (never the newest).
    pub fn forget_through(&self, generation: u64) -> Result<(), StateError> {
        let _lock = self.lock(true)?;
        let newest = self.layout.committed()?.map(|(m, _)| m.body.generation);
        self.layout.forget_older(newest.map_or(0, |n| n.min(generation + 1)))?;
        self.drop_older_tops()
    }

    /// The tops of every extent of generation `generation` ([`crate::protocol::proof::TOP_LEVELS`] levels
    /// down; zeros for an extent without tops), if kept: what lets challenges ask for shorter proofs.
    pub fn tops(&self, generation: u64) -> Option<Vec<[u8; 32]>> {
        self.read_values("tops", generation)
    }

    /// What the volume looked like at the last push the holder committed, if recorded.
    pub fn shape(&self) -> Result<Option<Shape>, StateError> {
        let path = self.layout.dir().join("shape.json");
        Ok(Home::at(self.layout.dir()).read_optional::<ShapeFile>(&path)?.map(|f| f.shape))
    }

    /// Records what the volume looked like at a push the holder committed.
    pub fn save_shape(&self, shape: &Shape) -> Result<(), StateError> {
        if self.shape().ok().flatten().as_ref() == Some(shape) {
            return Ok(());
        }
        let path = self.layout.dir().join("shape.json");
        Home::at(self.layout.dir()).write(&path, &ShapeFile { schema: Schema, shape: shape.clone() })
    }

    /// Keeps the tops of an older generation's own extents (those the next does not share),
    /// by index: `older-tops-<generation>.bin`, each entry the index (8 bytes) and its tops.
    pub fn save_older_tops(&self, generation: u64, own: &[(u64, &[[u8; 32]])]) -> Result<(), StateError> {
        let mut bytes = Vec::new();
        for (index, tops) in own {
            bytes.extend_from_slice(&index.to_le_bytes());
            tops.iter().for_each(|t| bytes.extend_from_slice(t));
        }
        write_atomic(&self.layout.dir().join(format!("older-tops-{generation}.bin")), &bytes)
    }

    /// The tops of an older generation of `count` extents, where kept ([`Outbound::save_older_tops`]):
    /// zeros for extents it shares with the next (its challenges never sample those).
    pub fn older_tops(&self, generation: u64, count: usize) -> Option<Vec<[u8; 32]>> {
        let per = 1usize << crate::protocol::proof::TOP_LEVELS;
        let bytes = fs::read(self.layout.dir().join(format!("older-tops-{generation}.bin"))).ok()?;
        let entry = 8 + 32 * per;
        if bytes.len() % entry != 0 {
            return None;
        }
        let mut all = vec![[0u8; 32]; count * per];
        for e in bytes.chunks_exact(entry) {
            let index = u64::from_le_bytes(e[..8].try_into().ok()?) as usize;
            let at = all.get_mut(index * per..(index + 1) * per)?;
            for (slot, value) in at.iter_mut().zip(e[8..].chunks_exact(32)) {
                *slot = value.try_into().ok()?;
            }
        }
        Some(all)
    }

    /// Removes the older tops of generations no longer kept.
    fn drop_older_tops(&self) -> Result<(), StateError> {
        let kept: std::collections::HashSet<u64> = self.layout.kept_numbers()?.into_iter().collect();
        for path in read_dir_or_empty(self.layout.dir())? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let generation = name.strip_prefix("older-tops-").and_then(|n| n.strip_suffix(".bin"));
            if generation.is_some_and(|g| g.parse::<u64>().is_ok_and(|g| !kept.contains(&g))) {
                remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// A new file (`<kind>-<generation>.bin` once installed) of `per` values (32 bytes each) per
    /// extent for `count` extents, of `kind` (`tops`, `volume-marks`): a push writes each
    /// extent's values at its place as it reads the volume, so it holds none of them, and
    /// [`Outbound::install_values`] puts the file in place once the holder has committed. Files
    /// a push that died left behind are removed first.
    pub fn values_file(&self, kind: &'static str, per: usize, count: u64) -> Result<ValuesFile, StateError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self.layout.dir();
        create_dir(dir)?;
        let prefix = format!(".{kind}.");
        for path in read_dir_or_empty(dir)? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let pid = name.strip_prefix(&prefix).and_then(|rest| rest.split('.').next());
            if name.ends_with(".partial") && pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                remove_file(&path)?;
            }
        }
        let tmp = dir.join(format!("{prefix}{}.{}.partial", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let io = |e| StateError::io(&tmp, e);
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
        let width = 32 * per as u64;
        file.set_len(count.saturating_mul(width)).map_err(io)?;
        Ok(ValuesFile { file, tmp, kind, width, synced: false })
    }

    /// Puts each of `values` in place as generation `generation`'s (synced); drops older ones.
    pub fn install_values(&self, values: Vec<ValuesFile>, generation: u64) -> Result<(), StateError> {
        let mut installed = Vec::new();
        for mut v in values {
            v.sync()?;
            let name = format!("{}-{generation}.bin", v.kind);
            let path = self.layout.dir().join(&name);
            fs::rename(&v.tmp, &path).map_err(|e| StateError::io(&path, e))?;
            installed.push((v.kind, name));
        }
        File::open(self.layout.dir()).and_then(|d| d.sync_all()).map_err(|e| StateError::io(self.layout.dir(), e))?;
        // Older ones are never read again: removing them is tidiness, not a condition.
        for (kind, name) in installed {
            let _ = self.remove_values(kind, Some(&name));
        }
        Ok(())
    }

    /// Removes every kept values file of `kind` (a kind no longer written).
    pub fn drop_values(&self, kind: &str) -> Result<(), StateError> {
        self.remove_values(kind, None)
    }

    /// Removes the kept values files of `kind` but `except`.
    fn remove_values(&self, kind: &str, except: Option<&str>) -> Result<(), StateError> {
        for old in read_dir_or_empty(self.layout.dir())? {
            let file = old.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let of_kind =
                file.strip_prefix(kind).and_then(|rest| rest.strip_prefix('-')).is_some_and(|g| g.ends_with(".bin"));
            if of_kind && Some(file) != except {
                remove_file(&old)?;
            }
        }
        Ok(())
    }

    /// Generation `generation`'s values of `kind`, `per` per extent, to read an extent's at a
    /// time; `None` if not kept.
    pub fn values_reader(&self, kind: &str, generation: u64, per: usize) -> Option<ValuesReader> {
        let file = File::open(self.layout.dir().join(format!("{kind}-{generation}.bin"))).ok()?;
        let len = file.metadata().ok()?.len();
        Some(ValuesReader { file, width: 32 * per as u64, len })
    }

    fn read_values(&self, kind: &str, generation: u64) -> Option<Vec<[u8; 32]>> {
        let bytes = fs::read(self.layout.dir().join(format!("{kind}-{generation}.bin"))).ok()?;
        (bytes.len() % 32 == 0).then(|| bytes.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect())
    }
}

/// A values file being written ([`Outbound::values_file`]); removed if dropped before it is
/// installed.
#[derive(Debug)]
pub struct ValuesFile {
    file: File,
    tmp: PathBuf,
    kind: &'static str,
    width: u64,
    synced: bool,
}

impl ValuesFile {
    /// Syncs what was written, once (a push does so while the holder commits).
    pub fn sync(&mut self) -> Result<(), StateError> {
        if !self.synced {
            self.file.sync_all().map_err(|e| StateError::io(&self.tmp, e))?;
            self.synced = true;
        }
        Ok(())
    }

    /// Writes extent `index`'s values (as many as the file has per extent).
    pub fn put(&self, index: u64, values: &[[u8; 32]]) -> Result<(), StateError> {
        let bytes = values.as_flattened();
        if bytes.len() as u64 != self.width {
            return Err(StateError::damaged(&self.tmp, format!("{} bytes of values for one extent", bytes.len())));
        }
        self.file.write_all_at(bytes, index * self.width).map_err(|e| StateError::io(&self.tmp, e))
    }
}

impl Drop for ValuesFile {
    fn drop(&mut self) {
        // Installed: renamed away, and this finds nothing.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// A kept values file, read an extent's values at a time ([`Outbound::values_reader`]).
#[derive(Debug)]
pub struct ValuesReader {
    file: File,
    width: u64,
    len: u64,
}

impl ValuesReader {
    /// Extent `index`'s values into `out` (as many as the file has per extent); false if the
    /// file does not reach that far.
    pub fn get(&self, index: u64, out: &mut [[u8; 32]]) -> bool {
        let at = index.saturating_mul(self.width);
        let out = out.as_flattened_mut();
        out.len() as u64 == self.width && at + self.width <= self.len && self.file.read_exact_at(out, at).is_ok()
    }
}
