//! Positioned I/O on the image for vm-memory's volatile copies.

use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

/// Positioned I/O on the image as a vm-memory volatile source/sink: each call is one
/// pread/pwrite at `offset`, which then advances. No shared file position, no lock.
pub(super) struct FileAt<'a> {
    pub(super) file: &'a File,
    pub(super) offset: u64,
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(&mut self, buf: &mut VolatileSlice<B>) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard_mut();
        // SAFETY: the slice is valid for writes of buf.len() bytes (VolatileSlice invariant).
        let r =
            unsafe { libc::pread(self.file.as_raw_fd(), guard.as_ptr().cast(), buf.len(), self.offset as libc::off_t) };
        if r < 0 {
            return Err(VolatileMemoryError::IOError(std::io::Error::last_os_error()));
        }
        buf.bitmap().mark_dirty(0, r as usize);
        self.offset += r as u64;
        Ok(r as usize)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(&mut self, buf: &VolatileSlice<B>) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard();
        // SAFETY: the slice is valid for reads of buf.len() bytes (VolatileSlice invariant).
        let r = unsafe {
            libc::pwrite(self.file.as_raw_fd(), guard.as_ptr().cast(), buf.len(), self.offset as libc::off_t)
        };
        if r < 0 {
            return Err(VolatileMemoryError::IOError(std::io::Error::last_os_error()));
        }
        self.offset += r as u64;
        Ok(r as usize)
    }
}
