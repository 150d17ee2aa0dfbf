//! A window of a file mapped read-only: its bytes read straight from the page cache, without the
//! copy a read makes (a third of the CPU of a push that finds little changed). The one module
//! where the workspace allows `unsafe`.
//!
//! A mapping's bytes are the file's: another process that writes the file while a window is
//! open changes what the window shows, as it would change what a read returns midway (a volume
//! in use is written while it is pushed; its next push sees the change). A file cut shorter than
//! a window while it is open would end the process with `SIGBUS`: [`Window::map`] maps nothing
//! the file does not reach when asked, and a window is open only while its extent is hashed.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::ops::Deref;

use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

/// `len` bytes of a file from `offset`, mapped read-only.
#[derive(Debug)]
pub struct Window {
    ptr: *mut c_void,
    len: usize,
}

impl Window {
    /// Maps `len` bytes of `file` from `offset` (a multiple of the page size), read-only, its
    /// pages filled from the page cache (or the disk) at once. Refused when the file does not
    /// reach that far, or `len` is 0.
    pub fn map(file: &File, offset: u64, len: usize) -> io::Result<Window> {
        let end = offset.checked_add(len as u64).ok_or(io::ErrorKind::InvalidInput)?;
        if len == 0 || file.metadata()?.len() < end && !is_block_device(file)? {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: a new mapping at an address the kernel chooses overlaps no memory of this
        // process; the arguments are checked by the kernel, which refuses what is wrong.
        let ptr = unsafe {
            mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::SHARED | MapFlags::POPULATE, file, offset)
        }?;
        Ok(Window { ptr, len })
    }
}

/// Whether `file` is a block device (whose metadata gives no length; it cannot be cut shorter).
fn is_block_device(file: &File) -> io::Result<bool> {
    use std::os::unix::fs::FileTypeExt as _;
    Ok(file.metadata()?.file_type().is_block_device())
}

impl Deref for Window {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live read-only mapping of `len` bytes (unmapped only on drop), and
        // nothing in this process writes it.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no borrow of it outlives `self`.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_shows_the_file_and_nothing_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(&*Window::map(&file, 4096, 8192).unwrap(), &bytes[4096..]);
        assert_eq!(&*Window::map(&file, 0, 4096).unwrap(), &bytes[..4096]);
        assert!(Window::map(&file, 4096, 3 * 4096).is_err());
        assert!(Window::map(&file, 0, 0).is_err());
    }
}
