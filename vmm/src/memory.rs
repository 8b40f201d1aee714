//! Guest RAM: below the 32-bit MMIO hole, and the rest from 4 GiB up.

use vm_memory::{GuestAddress, GuestMemoryMmap};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hole_split() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE as usize));
        assert_eq!(r[1], (GuestAddress(FOUR_GIB), (1 << 30) as usize));
    }
}
