//! Extent buffers, and reads and writes that bypass the page cache.
//!
//! An extent's bytes are copied as few times as possible: buffers are reused through a pool (a
//! fresh 4 MiB allocation costs page faults and zeroing every time), and they start on a
//! 4096-byte boundary so that files can be written with `O_DIRECT`, straight from the buffer to
//! the device. On this kind of machine the page-cache copy of a buffered write cost more CPU
//! than anything else a holder does (measured: 38% of the server's time during a push).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

/// The alignment direct I/O needs for the buffer's address, the file offset and the length (the
/// largest logical block size in common use).
pub const DIRECT_ALIGN: usize = 4096;

/// A byte buffer whose contents start on a [`DIRECT_ALIGN`] boundary: a `Vec` with room to
/// spare, used from its first aligned byte.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// Makes it `len` bytes long. Its bytes are unspecified (stale from an earlier use, or
    /// zeros): callers overwrite all of them.
    pub fn set_len(&mut self, len: usize) {
        if self.raw.len() < len + DIRECT_ALIGN {
            self.raw = vec![0; len + DIRECT_ALIGN];
            // `align_offset` may in principle give up; the buffer is then used unaligned and
            // writes fall back to the page cache.
            self.start = self.raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        }
        self.len = len;
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// A set of buffers lent out and given back: memory stays at a handful of extents, with no
/// allocation churn, whatever the volume's size.
#[derive(Debug, Clone)]
pub struct Pool(Arc<PoolInner>);

#[derive(Debug)]
struct PoolInner {
    free: Mutex<Vec<AlignedBuf>>,
    freed: Condvar,
    /// The most buffers kept for reuse.
    keep: usize,
}

impl Pool {
    /// A pool of `n` buffers (allocated on first use); it keeps at most `n`.
    pub fn new(n: usize) -> Self {
        let free = Mutex::new((0..n).map(|_| AlignedBuf::default()).collect());
        Pool(Arc::new(PoolInner { free, freed: Condvar::new(), keep: n }))
    }

    /// A buffer, waiting until one is free. Only for threads that may block; `n` bounds how many
    /// are out at once.
    pub fn take(&self) -> Pooled {
        let mut buf = AlignedBuf::default();
        if let Ok(mut free) = self.0.free.lock() {
            loop {
                if let Some(b) = free.pop() {
                    buf = b;
                    break;
                }
                free = match self.0.freed.wait(free) {
                    Ok(f) => f,
                    Err(_) => break,
                };
            }
        }
        Pooled { buf, pool: self.clone() }
    }

    /// A free buffer, or a new one if none is free (for callers that must not block a thread;
    /// what is given back beyond `n` is freed).
    pub fn take_or_new(&self) -> Pooled {
        let buf = self.0.free.lock().ok().and_then(|mut free| free.pop()).unwrap_or_default();
        Pooled { buf, pool: self.clone() }
    }
}

/// A buffer out of its pool; it goes back when dropped.
#[derive(Debug)]
pub struct Pooled {
    buf: AlignedBuf,
    pool: Pool,
}

impl Pooled {
    /// The buffer as `Bytes`, without a copy (for a QUIC stream, which keeps it until every packet
    /// that carried it is acknowledged); it goes back to the pool when the last clone is dropped.
    pub fn into_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(self)
    }
}

impl Deref for Pooled {
    type Target = AlignedBuf;
    fn deref(&self) -> &AlignedBuf {
        &self.buf
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut AlignedBuf {
        &mut self.buf
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let pool = &self.pool.0;
        if let Ok(mut free) = pool.free.lock()
            && free.len() < pool.keep
        {
            free.push(std::mem::take(&mut self.buf));
            pool.freed.notify_one();
        }
    }
}

/// Whether `data` can be written directly at `offset`: address, length and offset aligned.
fn direct_ok(data: &[u8], offset: u64) -> bool {
    !data.is_empty()
        && data.as_ptr().align_offset(DIRECT_ALIGN) == 0
        && data.len().is_multiple_of(DIRECT_ALIGN)
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
}

fn o_direct() -> i32 {
    rustix::fs::OFlags::DIRECT.bits() as i32
}

/// Whether an error says the file system or device refused direct I/O.
fn direct_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// Creates `path` (it must not exist; mode 0600) holding `data`, written straight to the device
/// where the file system allows it and through the page cache otherwise. Not synced: the
/// caller decides when.
pub fn create_file(path: &Path, data: &[u8]) -> io::Result<File> {
    let new = || {
        let mut o = OpenOptions::new();
        o.write(true).create_new(true).mode(0o600);
        o
    };
    if direct_ok(data, 0) {
        match new().custom_flags(o_direct()).open(path) {
            Ok(mut f) => match f.write_all(data) {
                Ok(()) => return Ok(f),
                Err(e) if direct_refused(&e) => fs::remove_file(path)?,
                Err(e) => return Err(e),
            },
            Err(e) if direct_refused(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let mut f = new().open(path)?;
    f.write_all(data)?;
    Ok(f)
}

/// Reads the whole file at `path` into `buf`, straight from the device where the file system
/// allows it (no page-cache copy), through the page cache otherwise.
pub fn read_file(path: &Path, buf: &mut AlignedBuf) -> io::Result<()> {
    let mut f = File::open(path)?;
    let len = usize::try_from(f.metadata()?.len()).map_err(io::Error::other)?;
    buf.set_len(len);
    if direct_ok(buf, 0)
        && let Ok(mut direct) = OpenOptions::new().read(true).custom_flags(o_direct()).open(path)
    {
        match direct.read_exact(buf) {
            Err(e) if direct_refused(&e) => {}
            other => return other,
        }
    }
    f.read_exact(buf)
}

/// A file read a part at a time, straight from the device where the file system allows it (no
/// page-cache copy), through the page cache otherwise: what a holder sends an extent from, so
/// that a peer taking it slowly holds a part of it in memory here, not all of it.
#[derive(Debug)]
pub struct PartReader {
    /// One descriptor for the whole send: opened for direct reads where the file system takes
    /// them, and switched to the page cache for a part that cannot be read so (an unaligned
    /// tail) or if the device refuses.
    file: File,
    len: u64,
}

impl PartReader {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = match OpenOptions::new().read(true).custom_flags(o_direct()).open(path) {
            Ok(f) => f,
            Err(e) if direct_refused(&e) => File::open(path)?,
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        Ok(PartReader { file, len })
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads `len` bytes at `offset` into `buf` (made that long).
    pub fn read_at(&self, buf: &mut AlignedBuf, offset: u64, len: usize) -> io::Result<()> {
        buf.set_len(len);
        let flags = rustix::fs::fcntl_getfl(&self.file)?;
        let direct = flags.contains(rustix::fs::OFlags::DIRECT);
        if direct && direct_ok(buf, offset) {
            match self.file.read_exact_at(buf, offset) {
                Err(e) if direct_refused(&e) => {}
                other => return other,
            }
        }
        if direct {
            rustix::fs::fcntl_setfl(&self.file, flags - rustix::fs::OFlags::DIRECT)?;
        }
        self.file.read_exact_at(buf, offset)
    }
}

/// Writes into an existing file at offsets: straight to the device for aligned bytes where the
/// file system allows it, through the page cache otherwise.
#[derive(Debug)]
pub struct OutFile {
    buffered: File,
    direct: Option<File>,
}

impl OutFile {
    /// Wraps `file`, opened for writing at `path`.
    pub fn new(file: File, path: &Path) -> Self {
        let direct = OpenOptions::new().write(true).custom_flags(o_direct()).open(path).ok();
        OutFile { buffered: file, direct }
    }

    /// The file (for reads, syncs and metadata).
    pub fn file(&self) -> &File {
        &self.buffered
    }

    /// Writes all of `data` at `offset`.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        if let Some(f) = self.direct.as_ref().filter(|_| direct_ok(data, offset)) {
            match f.write_all_at(data, offset) {
                Err(e) if direct_refused(&e) => {}
                other => return other,
            }
        }
        self.buffered.write_all_at(data, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_keep_their_bytes_across_lengths() {
        let mut b = AlignedBuf::default();
        b.set_len(3 * DIRECT_ALIGN);
        assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0);
        b.fill(7);
        b.set_len(DIRECT_ALIGN);
        assert_eq!(b.len(), DIRECT_ALIGN);
        assert!(b.iter().all(|&x| x == 7), "a shorter length reuses the allocation");
        b.set_len(10 * DIRECT_ALIGN);
        assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0);
    }

    /// A file read in parts, aligned or not, direct or through the page cache, gives its bytes.
    #[test]
    fn a_file_read_in_parts_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> =
            (0..(3 * DIRECT_ALIGN as u32 * 64 + 1000)).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
        fs::write(&path, &bytes).unwrap();
        let r = PartReader::open(&path).unwrap();
        assert_eq!(r.len(), bytes.len() as u64);
        for part in [DIRECT_ALIGN * 16, 5000] {
            let (mut back, mut buf, mut at) = (Vec::new(), AlignedBuf::default(), 0);
            while at < bytes.len() {
                let n = part.min(bytes.len() - at);
                r.read_at(&mut buf, at as u64, n).unwrap();
                back.extend_from_slice(&buf);
                at += n;
            }
            assert!(back == bytes, "parts of {part}");
        }
    }

    /// A pool of n never lends more than n at once: a taker waits until a buffer comes back,
    /// whether it was dropped or handed over as `Bytes` and that dropped.
    #[test]
    fn a_pool_bounds_what_is_out_and_bytes_give_back() {
        let pool = Pool::new(1);
        let mut first = pool.take();
        first.set_len(DIRECT_ALIGN);
        let bytes = first.into_bytes();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || tx.send(pool.take().len()).unwrap())
        };
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "the taker waits");
        let clone = bytes.clone();
        drop(bytes);
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "a clone still holds it");
        drop(clone);
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(), DIRECT_ALIGN, "the same buffer");
        waiter.join().unwrap();
        let extra = (pool.take_or_new(), pool.take_or_new());
        drop(extra);
        assert_eq!(pool.0.free.lock().unwrap().len(), 1, "it keeps no more than n");
    }

    #[test]
    fn files_written_directly_or_not_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        for (n, len) in [(0, 2 * DIRECT_ALIGN), (1, 5000), (2, 1)].into_iter() {
            let mut b = AlignedBuf::default();
            b.set_len(len);
            b.iter_mut().enumerate().for_each(|(i, x)| *x = (i * 31 + n) as u8);
            let path = dir.path().join(format!("f{n}"));
            create_file(&path, &b).unwrap();
            assert_eq!(fs::read(&path).unwrap(), &b[..]);
            assert!(create_file(&path, &b).is_err(), "an existing file is never overwritten");
        }
        let path = dir.path().join("out");
        let out = OutFile::new(File::create(&path).unwrap(), &path);
        let mut b = AlignedBuf::default();
        b.set_len(DIRECT_ALIGN);
        b.fill(1);
        out.write_at(&b, DIRECT_ALIGN as u64).unwrap();
        b.set_len(100);
        b.fill(2);
        out.write_at(&b, 10).unwrap();
        let got = fs::read(&path).unwrap();
        assert_eq!(got.len(), 2 * DIRECT_ALIGN);
        assert!(got[..10].iter().all(|&x| x == 0) && got[10..110].iter().all(|&x| x == 2));
        assert!(got[DIRECT_ALIGN..].iter().all(|&x| x == 1));
    }
}
