//! Guest RAM: below the 32-bit MMIO hole, and the rest from 4 GiB up.

use std::fs::File;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::layout::{FOUR_GIB, MMIO_HOLE};

/// The RAM ranges for `size` bytes of guest memory.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_HOLE {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![(GuestAddress(0), MMIO_HOLE as usize), (GuestAddress(FOUR_GIB), (size - MMIO_HOLE) as usize)]
    }
}

/// Anonymous, lazily populated mappings: untouched guest pages cost the host nothing.
pub fn create(size: u64) -> Result<GuestMemoryMmap, String> {
    GuestMemoryMmap::from_ranges(&ram_ranges(size)).map_err(|e| format!("guest memory: {e}"))
}

/// Guest RAM of `size` bytes as a private, copy-on-write mapping of `file` from `offset` on (the
/// ranges back to back): pages are read from the file when the guest first touches them, writes
/// stay in this process, and any number of VMs share the file's unwritten pages.
pub fn map_private(file: &File, offset: u64, size: u64) -> Result<GuestMemoryMmap, String> {
    let mut regions = Vec::new();
    let mut at = offset;
    for (gpa, len) in ram_ranges(size) {
        let fo = FileOffset::new(file.try_clone().map_err(|e| format!("guest memory: {e}"))?, at);
        let mapping = MmapRegionBuilder::new(len)
            .with_file_offset(fo)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| format!("guest memory: mapping the saved RAM: {e}"))?;
        regions.push(GuestRegionMmap::new(mapping, gpa).ok_or("guest memory: region overflows")?);
        at += len as u64;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| format!("guest memory: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hole_split() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE as usize));
        assert_eq!(r[1], (GuestAddress(FOUR_GIB), ((4 << 30) - MMIO_HOLE) as usize));
    }
}
