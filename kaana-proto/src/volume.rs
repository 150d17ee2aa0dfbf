//! The encrypted volume this node backs up: a LUKS block device or image file, read raw.

use std::fs::File;
use std::io::{Seek as _, SeekFrom};
use std::path::Path;

use crate::state::StateError;

/// The volume's size in bytes (works for block devices as well as files).
pub fn size(path: &Path) -> Result<u64, StateError> {
    let mut f = File::open(path).map_err(|e| StateError::io(path, e))?;
    f.seek(SeekFrom::End(0)).map_err(|e| StateError::io(path, e))
}
