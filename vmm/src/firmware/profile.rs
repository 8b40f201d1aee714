//! Where firmware spends its time: `XHYVE_PROFILE`'s samples (`crate::profile`) of a firmware
//! machine add the PE or TE image that holds RIP (base, SizeOfImage, entry point RVA: the key
//! `tests/tools/firmware_profile.py` matches against the firmware's modules) and the stack's top
//! words (return addresses into callers). Firmware code is identity-mapped, so linear addresses
//! are read as guest-physical ones.

use std::collections::HashMap;
use std::sync::Mutex;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::profile::SampleDetail;

/// How far below RIP an image header is looked for.
const SCAN: u64 = 4 << 20;
/// Image headers sit at least this aligned (TE images in place in a volume: 32 bytes).
const ALIGN: u64 = 32;
const STACK_WORDS: usize = 16;

/// An image header: base, size, entry point RVA.
type Image = (u64, u32, u32);

/// The images of the firmware's memory (RAM and the firmware's own), found by scanning down from
/// RIP for a header.
pub struct Images {
    mem: GuestMemoryMmap,
    /// Image found for each 4 KiB page of RIP.
    images: Mutex<HashMap<u64, Option<Image>>>,
}

impl Images {
    pub fn new(mem: GuestMemoryMmap) -> Images {
        Images { mem, images: Mutex::default() }
    }

    fn u16_at(&self, addr: u64) -> Option<u16> {
        self.mem.read_obj::<u16>(GuestAddress(addr)).ok()
    }

    fn u32_at(&self, addr: u64) -> Option<u32> {
        self.mem.read_obj::<u32>(GuestAddress(addr)).ok()
    }

    /// The PE32(+) or TE image whose header is at `at`, if it covers `rip`.
    fn image_at(&self, at: u64, rip: u64) -> Option<Image> {
        match &self.u16_at(at)?.to_le_bytes() {
            b"MZ" => {
                let pe = at + u64::from(self.u32_at(at + 0x3c)?);
                if self.u32_at(pe)? != 0x4550 {
                    return None;
                }
                let opt = pe + 24;
                let (size, entry) = (self.u32_at(opt + 56)?, self.u32_at(opt + 16)?);
                (rip < at + u64::from(size)).then_some((at, size, entry))
            }
            // TE: no SizeOfImage; the entry point RVA and the stripped size identify it.
            b"VZ" => {
                let stripped = self.u16_at(at + 6)?;
                let entry = self.u32_at(at + 8)?;
                Some((at, u32::from(stripped), entry))
            }
            _ => None,
        }
    }

    fn find_image(&self, rip: u64) -> Option<Image> {
        let page = rip & !0xfff;
        if let Some(hit) = self.images.lock().unwrap().get(&page) {
            return *hit;
        }
        let mut at = rip & !(ALIGN - 1);
        let lowest = rip.saturating_sub(SCAN);
        let found = loop {
            if let Some(i) = self.image_at(at, rip) {
                break Some(i);
            }
            if at < lowest + ALIGN {
                break None;
            }
            at -= ALIGN;
        };
        self.images.lock().unwrap().insert(page, found);
        found
    }
}

impl SampleDetail for Images {
    fn detail(&self, rip: u64, sp: u64) -> String {
        let mut line = match self.find_image(rip) {
            Some((base, size, entry)) => format!("{base:#x} {size:#x} {entry:#x}"),
            None => "- - -".into(),
        };
        let mut stack = [0u64; STACK_WORDS];
        let _ = self.mem.read_slice(bytemuck_words(&mut stack), GuestAddress(sp));
        for w in stack {
            line += &format!(" {w:#x}");
        }
        line
    }
}

fn bytemuck_words(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u64.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), std::mem::size_of_val(words)) }
}
