//! The encrypted volume this node backs up: a LUKS block device or image file, read raw in
//! extents, so that everything read (and sent) is ciphertext.
//!
//! Extents are read so as to leave the page cache as it was. From a file: what a read brings in
//! is dropped once copied out, what was cached already stays (`RWF_DONTCACHE`, where the kernel
//! and the file system take it: ext4 on Linux 6.18 here). From a block device, which does not
//! take it: each extent's pages are dropped once read (the raw device's cache holds only what
//! raw readers like this one brought in; the file system on top caches its own). A nightly push
//! reads the whole volume; without this, a large one would push every other program's cached
//! files out of memory each night, for ciphertext nobody reads until the next night.
//!
//! A volume that does not look encrypted (no LUKS header, and bytes that are not near-random) is
//! refused unless the caller allows plaintext: sending a plain file system to a peer would hand
//! it the data.

use std::fs::File;
use std::io::{IoSliceMut, Seek as _, SeekFrom};
use std::num::NonZeroU64;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::{Errno, ReadWriteFlags};

use thiserror::Error;

use crate::protocol::manifest::{Geometry, ManifestError};
use crate::protocol::push::Shape;
use crate::store::buffer::AlignedBuf;
use crate::store::home::StateError;

/// The magic at the start of a LUKS1 or LUKS2 header.
const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// Bits of entropy per byte above which sampled bytes look encrypted.
const ENTROPY_THRESHOLD: f64 = 7.9;
/// Blocks sampled to judge the entropy, and their size.
const SAMPLES: u64 = 64;
const SAMPLE_LEN: usize = 4096;
/// `RWF_DONTCACHE` (Linux 6.14, on the file systems that take it): pages this read brings into
/// the page cache are dropped once read; pages cached before stay. rustix does not name it yet.
const RWF_DONTCACHE: u32 = 0x80;

/// Why a volume cannot be read.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// Reading failed.
    #[error("volume {}: {error}", .path.display())]
    Io {
        /// The volume.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// It does not look encrypted.
    #[error(
        "volume {} does not look encrypted (no LUKS header; {entropy:.2} bits of entropy per byte): \
         sending it would hand peers the data. Use a LUKS volume, or pass --allow-plaintext if it is \
         encrypted some other way",
        .path.display()
    )]
    Plaintext {
        /// The volume.
        path: PathBuf,
        /// What was measured.
        entropy: f64,
    },
    /// The extent size is not allowed.
    #[error(transparent)]
    Geometry(#[from] ManifestError),
}

/// How a volume looked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Looks {
    /// It starts with a LUKS header.
    Luks,
    /// Its bytes are near-random (bits of entropy per byte).
    Random(f64),
    /// Neither (bits of entropy per byte).
    Plain(f64),
}

/// An open volume.
#[derive(Debug)]
pub struct Volume {
    file: File,
    path: PathBuf,
    geometry: Geometry,
    /// Whether reads may still ask to leave the page cache alone (false once the kernel or the
    /// file system refused).
    uncached: AtomicBool,
    /// A block device: its pages are dropped once read, when `uncached` reads are refused.
    device: bool,
}

impl Volume {
    /// Opens `path` for reading in extents of `extent_size`, refusing one that does not look
    /// encrypted unless `allow_plaintext`.
    pub fn open(path: &Path, extent_size: u32, allow_plaintext: bool) -> Result<Volume, VolumeError> {
        let io = |error| VolumeError::Io { path: path.to_owned(), error };
        let mut file = File::open(path).map_err(io)?;
        let device = file.metadata().map_err(io)?.file_type().is_block_device();
        let size = file.seek(SeekFrom::End(0)).map_err(io)?;
        let geometry = Geometry::new(size, extent_size)?;
        if !allow_plaintext && let Looks::Plain(entropy) = looks(&file, size).map_err(io)? {
            return Err(VolumeError::Plaintext { path: path.to_owned(), entropy });
        }
        Ok(Volume { file, path: path.to_owned(), geometry, uncached: AtomicBool::new(true), device })
    }

    /// Its shape.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// What it looks like now (for the push guard): LUKS with its UUID, near-random, or plain.
    pub fn shape(&self) -> Result<Shape, VolumeError> {
        let io = |error| VolumeError::Io { path: self.path.clone(), error };
        Ok(match looks(&self.file, self.geometry.volume_size).map_err(io)? {
            Looks::Luks => {
                // LUKS1 and LUKS2 both keep the UUID, NUL-padded, at byte 168.
                let mut uuid = [0u8; 40];
                read_uncached(&self.file, &mut uuid, 168, &self.uncached).map_err(io)?;
                let text: String = uuid
                    .iter()
                    .take_while(|&&b| b != 0)
                    .map(|&b| char::from(b))
                    .filter(|c| c.is_ascii_graphic())
                    .collect();
                Shape { kind: "luks".into(), luks_uuid: Some(text) }
            }
            Looks::Random(_) => Shape { kind: "random".into(), luks_uuid: None },
            Looks::Plain(_) => Shape { kind: "plain".into(), luks_uuid: None },
        })
    }

    /// Reads extent `index` into `buf` (resized to the extent's length), leaving the page cache
    /// as it was where the kernel can.
    pub fn read_extent(&self, index: u64, buf: &mut AlignedBuf) -> Result<(), VolumeError> {
        let (offset, len) = (self.geometry.offset(index), self.geometry.len(index));
        buf.set_len(len);
        read_uncached(&self.file, buf, offset, &self.uncached)
            .map_err(|error| VolumeError::Io { path: self.path.clone(), error })?;
        if self.device && !self.reads_uncached() {
            // Best effort: pages another program keeps dirty or mapped stay.
            let _ = rustix::fs::fadvise(&self.file, offset, NonZeroU64::new(len as u64), rustix::fs::Advice::DontNeed);
        }
        Ok(())
    }

    /// Whether its reads still leave the page cache alone (the kernel and file system took
    /// `RWF_DONTCACHE` so far).
    pub fn reads_uncached(&self) -> bool {
        self.uncached.load(Ordering::Relaxed)
    }
}

/// Fills `buf` from `offset` of `file` with `RWF_DONTCACHE` reads while `uncached` holds. When
/// one fails, a plain read of the same bytes tells why: if it succeeds, the kernel, the file
/// system or the device refused the flag (before Linux 6.14, tmpfs, a block device, a sandbox),
/// `uncached` no longer holds and plain reads follow; if not, its error is the read's.
fn read_uncached(file: &File, mut buf: &mut [u8], mut offset: u64, uncached: &AtomicBool) -> std::io::Result<()> {
    let plain = |buf: &mut [u8], offset| {
        file.read_exact_at(buf, offset)
            .map_err(|e| if e.kind() == std::io::ErrorKind::UnexpectedEof { ended() } else { e })
    };
    while !buf.is_empty() && uncached.load(Ordering::Relaxed) {
        let flags = ReadWriteFlags::from_bits_retain(RWF_DONTCACHE);
        match rustix::io::preadv2(file, &mut [IoSliceMut::new(buf)], offset, flags) {
            Ok(0) => return Err(ended()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(_) => {
                plain(buf, offset)?;
                uncached.store(false, Ordering::Relaxed);
                return Ok(());
            }
        }
    }
    plain(buf, offset)
}

fn ended() -> std::io::Error {
    let error = "the volume ends before this extent does (was it made shorter while it was read?)";
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, error)
}

/// Judges whether a volume's raw bytes look encrypted.
pub fn looks(file: &File, size: u64) -> std::io::Result<Looks> {
    let uncached = AtomicBool::new(true);
    let mut magic = [0u8; 6];
    if size >= 6 {
        read_uncached(file, &mut magic, 0, &uncached)?;
        if &magic == LUKS_MAGIC {
            return Ok(Looks::Luks);
        }
    }
    let mut counts = [0u64; 256];
    let mut total = 0u64;
    let mut block = vec![0u8; SAMPLE_LEN];
    let step = (size / SAMPLES).max(SAMPLE_LEN as u64);
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(SAMPLE_LEN as u64) as usize;
        read_uncached(file, &mut block[..len], offset, &uncached)?;
        for &b in &block[..len] {
            counts[usize::from(b)] += 1;
        }
        total += len as u64;
        offset += step;
    }
    let entropy = if total == 0 {
        0.0
    } else {
        counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total as f64;
                -p * p.log2()
            })
            .sum()
    };
    Ok(if entropy >= ENTROPY_THRESHOLD { Looks::Random(entropy) } else { Looks::Plain(entropy) })
}

/// The volume's size in bytes (works for block devices as well as files).
pub fn size(path: &Path) -> Result<u64, StateError> {
    let mut f = File::open(path).map_err(|e| StateError::io(path, e))?;
    f.seek(SeekFrom::End(0)).map_err(|e| StateError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_luks_and_random_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"hello world, this is a file system ".repeat(10_000)).unwrap();
        assert!(matches!(Volume::open(&plain, 4096, false), Err(VolumeError::Plaintext { .. })));
        assert!(Volume::open(&plain, 4096, true).is_ok());

        let mut luks = b"LUKS\xba\xbe\x00\x01".to_vec();
        luks.resize(1 << 20, 0);
        let luks_path = dir.path().join("luks");
        std::fs::write(&luks_path, &luks).unwrap();
        let f = File::open(&luks_path).unwrap();
        assert_eq!(looks(&f, 1 << 20).unwrap(), Looks::Luks);

        let mut random = vec![0u8; 1 << 20];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for b in random.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        let random_path = dir.path().join("random");
        std::fs::write(&random_path, &random).unwrap();
        let v = Volume::open(&random_path, 4096, false).unwrap();
        assert_eq!(v.geometry().count(), 256);
        let mut buf = AlignedBuf::default();
        v.read_extent(3, &mut buf).unwrap();
        assert_eq!(&buf[..], &random[3 * 4096..4 * 4096]);
    }

    /// A file system that refuses reads that leave the page cache alone (tmpfs: its files are
    /// the page cache) gets plain reads, of the same bytes, the last extent short as it is.
    #[test]
    fn where_uncached_reads_are_refused_plain_ones_read_the_same() {
        let shm = Path::new("/dev/shm");
        let dirs =
            [tempfile::tempdir().unwrap()].into_iter().chain(shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap()));
        for dir in dirs {
            let path = dir.path().join("vol");
            let bytes: Vec<u8> =
                (0..(3u32 << 20) + 1000).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
            std::fs::write(&path, &bytes).unwrap();
            let v = Volume::open(&path, 1 << 20, true).unwrap();
            let mut buf = AlignedBuf::default();
            let mut back = Vec::new();
            for i in 0..v.geometry().count() {
                v.read_extent(i, &mut buf).unwrap();
                back.extend_from_slice(&buf);
            }
            assert_eq!(back, bytes, "{}", dir.path().display());
            if dir.path().starts_with(shm) {
                assert!(!v.reads_uncached(), "tmpfs took RWF_DONTCACHE");
            }
            // Made shorter while it is read: the extents past its new end fail, saying so.
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(3 << 19).unwrap();
            v.read_extent(0, &mut buf).unwrap();
            let e = v.read_extent(1, &mut buf).unwrap_err().to_string();
            assert!(e.contains("the volume ends before this extent does"), "{e}");
        }
    }

    fn buffers_kib() -> u64 {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let line = meminfo.lines().find(|l| l.starts_with("Buffers:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// A block device (here a loop device over a file) takes no `RWF_DONTCACHE`: each extent's
    /// pages are dropped once read, so the device's cache (`Buffers`) does not grow by the volume.
    /// Needs root for `losetup`; without it, says so and checks nothing.
    #[test]
    fn a_block_device_volume_leaves_its_cache_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backing");
        let size = 64usize << 20;
        let bytes: Vec<u8> = (0..size as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let out = std::process::Command::new("losetup").args(["-f", "--show", "--direct-io=on"]).arg(&path).output();
        let Some(device) =
            out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        else {
            eprintln!("losetup refused (not root?): nothing checked");
            return;
        };
        let detach = || std::process::Command::new("losetup").args(["-d", &device]).status();
        let result = std::panic::catch_unwind(|| {
            // Held open, as a mapped LUKS device is: the last close would drop the cache anyway.
            let _held = File::open(&device).unwrap();
            let v = Volume::open(Path::new(&device), 4 << 20, true).unwrap();
            let before = buffers_kib();
            let mut buf = AlignedBuf::default();
            for i in 0..v.geometry().count() {
                v.read_extent(i, &mut buf).unwrap();
                let at = (i as usize) << 22;
                assert!(buf[..] == bytes[at..at + buf.len()], "extent {i}");
            }
            let grew = buffers_kib().saturating_sub(before);
            assert!(grew < (size as u64 >> 10) / 2, "reading a {size}-byte device grew its cache by {grew} KiB");
        });
        let _ = detach();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
