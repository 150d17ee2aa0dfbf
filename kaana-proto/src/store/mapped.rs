//! A window of a file mapped read-only: its bytes read straight from the page cache, without the
//! copy a read makes (a third of the CPU of a push that finds little changed). The one module
//! where the workspace allows `unsafe`.
//!
//! A mapping's bytes are the file's: another process that writes the file while a window is
//! open changes what the window shows, as it would change what a read returns midway. A window
//! is only hashed, to compare; bytes to send are read again into a buffer of this process's own.
//!
//! Reading a window the device cannot read (an I/O error), or that a file cut shorter no longer
//! reaches, raises `SIGBUS` where a read would have returned an error. [`Window::map`] maps
//! nothing the file does not reach when asked, and a window is open only while its extent is
//! hashed; for what is left, the first window made sets a `SIGBUS` handler (for the whole
//! process) that, while a window is open, says what happened and ends the process with exit 1.
//! A process stopped there is one killed mid-push: the next push resumes, and takes up a
//! generation a holder committed meanwhile (another push of `push --all`).

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};

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
        on_bus_error();
        // SAFETY: a new mapping at an address the kernel chooses overlaps no memory of this
        // process; the arguments are checked by the kernel, which refuses what is wrong.
        let ptr = unsafe {
            mmap(std::ptr::null_mut(), len, ProtFlags::READ, MapFlags::SHARED | MapFlags::POPULATE, file, offset)
        }?;
        OPEN.fetch_add(1, Ordering::SeqCst);
        Ok(Window { ptr, len })
    }
}

/// Windows open now, in all threads: a `SIGBUS` while none is open is not this module's.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Sets, once, what `SIGBUS` does while a window is open: say the volume could not be read, and
/// exit 1.
fn on_bus_error() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        // SAFETY: `said` calls only what is safe in a signal handler; the `sigaction` is zeroed
        // (an empty mask) before its handler and flags are set.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction =
                said as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    });
}

/// The `SIGBUS` handler. A mapped file that could not be read (`BUS_ADRERR`: past its end;
/// `BUS_OBJERR`: the device failed) while a window is open is the volume's; anything else (a
/// memory error, a `kill`) gets the default action back and is raised again, to end the process
/// as it would have.
extern "C" fn said(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    const WHAT: &[u8] = b"error: the volume could not be read (an I/O error, or the file was cut shorter while it was \
        read): the push stopped. Once the volume reads again, push again: it resumes\n";
    // SAFETY: `info` is the kernel's for this signal; `write`, `_exit`, `sigaction` and `raise` are safe
    // in a signal handler, and `WHAT` is a static buffer of its length.
    unsafe {
        let code = if info.is_null() { 0 } else { (*info).si_code };
        if OPEN.load(Ordering::SeqCst) > 0 && (code == libc::BUS_ADRERR || code == libc::BUS_OBJERR) {
            libc::write(2, WHAT.as_ptr().cast(), WHAT.len());
            libc::_exit(1);
        }
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
        // Blocked until this handler returns; then the default action ends the process.
        libc::raise(libc::SIGBUS);
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
        OPEN.fetch_sub(1, Ordering::SeqCst);
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

    /// Run by [`a_window_past_the_end_of_a_file_cut_shorter_ends_the_process_saying_why`] in a
    /// process of its own: maps a file, cuts it shorter, reads past its end.
    #[test]
    #[ignore = "ends its process; run by the test below"]
    fn cut_shorter_under_a_window() {
        let Some(dir) = std::env::var_os("KAANA_TEST_CUT_SHORTER") else { return };
        let path = std::path::Path::new(&dir).join("f");
        std::fs::write(&path, vec![7u8; 2 * 4096]).unwrap();
        let window = Window::map(&File::open(&path).unwrap(), 0, 2 * 4096).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        let sum: u64 = window.iter().map(|&b| u64::from(b)).sum();
        println!("read {sum}, not stopped");
    }

    #[test]
    fn a_window_past_the_end_of_a_file_cut_shorter_ends_the_process_saying_why() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::mapped::tests::cut_shorter_under_a_window", "--ignored", "--nocapture"])
            .env("KAANA_TEST_CUT_SHORTER", dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("the volume could not be read"), "{stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("not stopped"));
    }
}
