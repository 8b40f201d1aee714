//! The variable store as OVMF's QEMU flash driver (QemuFlashFvbServicesRuntimeDxe) uses it: an
//! Intel-command-set CFI flash, as QEMU's pflash_cfi01, reduced to the commands that driver sends.
//!
//! - It probes: a byte that reads back unchanged after CLEAR STATUS, then READ STATUS reading 0,
//!   means flash (RAM would read the command back, ROM the old byte).
//! - It programs one byte per WRITE BYTE command and erases 4 KiB blocks (BLOCK ERASE, CONFIRM),
//!   then returns to READ ARRAY.
//!
//! In READ ARRAY mode the store is mapped read-only into the guest, so the firmware reads it at
//! memory speed and only writes exit; in any other mode the mapping is removed, so that reads
//! exit too and return the status register. Program and erase take effect at once (status ready).

use std::sync::{Arc, Mutex};

use vm_memory::mmap::MmapRegion;
use vm_memory::{VolatileMemory, VolatileSlice};

use crate::bus::BusDevice;
use crate::hypervisor::Vm;

const WRITE_BYTE: u8 = 0x10;
const WRITE_BYTE_ALT: u8 = 0x40;
const BLOCK_ERASE: u8 = 0x20;
const CLEAR_STATUS: u8 = 0x50;
const READ_STATUS: u8 = 0x70;
const ERASE_CONFIRM: u8 = 0xd0;
const READ_ARRAY: u8 = 0xff;

/// Status register: the write state machine is ready; an erase or program sequence failed.
const STATUS_READY: u8 = 0x80;
const STATUS_ERASE_ERROR: u8 = 0x20;
const STATUS_PROGRAM_ERROR: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    ReadArray,
    ReadStatus,
    /// WRITE BYTE seen: the next write is data.
    Program,
    /// BLOCK ERASE seen: the next write must be CONFIRM.
    Erase,
}

struct State {
    mode: Mode,
    status: u8,
    /// Whether the store is mapped into the guest now.
    mapped: bool,
}

pub struct Flash {
    vm: Arc<dyn Vm>,
    slot: u32,
    base: u64,
    store: MmapRegion,
    block: u64,
    state: Mutex<State>,
}

impl Flash {
    /// Maps `store` read-only at `base` through KVM slot `slot`.
    pub fn new(vm: Arc<dyn Vm>, slot: u32, base: u64, store: MmapRegion, block: u64) -> Result<Flash, String> {
        let flash = Flash {
            vm,
            slot,
            base,
            store,
            block,
            state: Mutex::new(State { mode: Mode::ReadArray, status: STATUS_READY, mapped: false }),
        };
        flash.set_mapped(&mut flash.state.lock().unwrap(), true)?;
        Ok(flash)
    }

    pub fn len(&self) -> u64 {
        self.store.size() as u64
    }

    /// The store's host address, length and guest address.
    pub fn mapping(&self) -> (*mut u8, usize, u64) {
        (self.store.as_ptr(), self.store.size(), self.base)
    }

    fn slice(&self, offset: u64, len: usize) -> Option<VolatileSlice<'_>> {
        self.store.get_slice(offset as usize, len).ok()
    }

    fn set_mapped(&self, state: &mut State, mapped: bool) -> Result<(), String> {
        if state.mapped == mapped {
            return Ok(());
        }
        if mapped {
            // SAFETY: the store lives as long as this Flash, which the VMM keeps until it exits.
            unsafe { self.vm.map_readonly_memory(self.slot, self.base, self.len(), self.store.as_ptr() as u64) }
        } else {
            self.vm.unmap_memory(self.slot)
        }
        .map_err(|e| e.to_string())?;
        state.mapped = mapped;
        Ok(())
    }

    /// A command or data byte written at `offset`.
    fn command(&self, state: &mut State, offset: u64, data: &[u8]) {
        let value = data[0];
        state.mode = match state.mode {
            Mode::Program => {
                // QEMU stores the byte as written (real flash could only clear bits); OVMF
                // erases before it programs, so the two agree.
                if let Some(s) = self.slice(offset, data.len()) {
                    s.copy_from(data);
                }
                state.status |= STATUS_READY;
                Mode::ReadStatus
            }
            Mode::Erase if value == ERASE_CONFIRM => {
                let start = offset - offset % self.block;
                if let Some(s) = self.slice(start, self.block as usize) {
                    s.copy_from(&vec![0xffu8; self.block as usize]);
                }
                state.status |= STATUS_READY;
                Mode::ReadStatus
            }
            Mode::Erase => {
                state.status |= STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR;
                Mode::ReadStatus
            }
            Mode::ReadArray | Mode::ReadStatus => match value {
                WRITE_BYTE | WRITE_BYTE_ALT => Mode::Program,
                BLOCK_ERASE => Mode::Erase,
                READ_STATUS => Mode::ReadStatus,
                CLEAR_STATUS => {
                    state.status = 0;
                    Mode::ReadArray
                }
                READ_ARRAY => Mode::ReadArray,
                // Commands OVMF never sends (identification, query, suspend...).
                _ => Mode::ReadArray,
            },
        };
    }
}

impl BusDevice for Flash {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let state = self.state.lock().unwrap();
        match (state.mode, self.slice(offset, data.len())) {
            (Mode::ReadArray, Some(s)) => drop(s.copy_to(data)),
            (Mode::ReadArray, None) => data.fill(0xff),
            _ => data.fill(state.status),
        };
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut state = self.state.lock().unwrap();
        self.command(&mut state, offset, data);
        let mapped = state.mode == Mode::ReadArray;
        if let Err(e) = self.set_mapped(&mut state, mapped) {
            crate::logger::log(format!("firmware flash: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::fake::FakeVm;

    fn flash() -> Flash {
        let store = MmapRegion::new(0x4000).unwrap();
        store.get_slice(0, 0x4000).unwrap().copy_from(&[0xaau8; 0x4000]);
        Flash::new(Arc::new(FakeVm::default()), 17, 0xffc0_0000, store, 0x1000).unwrap()
    }

    fn read(f: &Flash, offset: u64) -> u8 {
        let mut b = [0u8];
        f.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn ovmf_probe_finds_flash() {
        // QemuFlashDetected: CLEAR STATUS must not change the byte, READ STATUS must read 0.
        let f = flash();
        let original = read(&f, 0x10);
        f.write(0x10, &[CLEAR_STATUS]);
        assert_eq!(read(&f, 0x10), original);
        f.write(0x10, &[READ_STATUS]);
        assert!(!f.state.lock().unwrap().mapped, "status reads must exit");
        assert_eq!(read(&f, 0x10), 0);
        f.write(0x10, &[READ_ARRAY]);
        assert!(f.state.lock().unwrap().mapped);
        assert_eq!(read(&f, 0x10), 0xaa);
    }

    #[test]
    fn program_and_erase() {
        let f = flash();
        // QemuFlashWrite: WRITE BYTE + data per byte, READ ARRAY at the last byte.
        for (i, b) in [1u8, 2, 3].iter().enumerate() {
            f.write(0x1ffe + i as u64, &[WRITE_BYTE]);
            f.write(0x1ffe + i as u64, &[*b]);
        }
        assert_eq!(read(&f, 0x2000), STATUS_READY, "status until READ ARRAY");
        f.write(0x2000, &[READ_ARRAY]);
        assert_eq!([read(&f, 0x1ffe), read(&f, 0x1fff), read(&f, 0x2000), read(&f, 0x2001)], [1, 2, 3, 0xaa]);
        // QemuFlashEraseBlock on block 1 clears 0x1000..0x2000 only.
        f.write(0x1000, &[BLOCK_ERASE]);
        f.write(0x1000, &[ERASE_CONFIRM]);
        f.write(0x1000, &[READ_ARRAY]);
        assert_eq!([read(&f, 0xfff), read(&f, 0x1000), read(&f, 0x1fff), read(&f, 0x2000)], [0xaa, 0xff, 0xff, 3]);
        // A bad erase sequence sets the error bits and erases nothing.
        f.write(0, &[BLOCK_ERASE]);
        f.write(0, &[0x00]);
        assert_eq!(read(&f, 0) & (STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR), 0x30);
        f.write(0, &[READ_ARRAY]);
        assert_eq!(read(&f, 0), 0xaa);
    }
}
