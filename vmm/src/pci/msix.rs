//! MSI-X: the vector table and pending-bit array a function exposes in a BAR, delivered through
//! KVM irqfds whose GSIs are routed to the table's messages.
//!
//! Every vector gets a GSI and an irqfd when the device is built. Routes are pushed to the
//! hypervisor lazily, when a vector fires with an address/data pair that differs from the one
//! routed, so the guest's programming of the table (several dword writes while masked) costs
//! one routing update, not one per write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::hypervisor::{default_irqchip_routes, IrqRoute, Vm};

/// First GSI for MSI routes: 0-23 are the IOAPIC's.
const FIRST_MSI_GSI: u32 = 24;
pub const ENTRY_SIZE: u64 = 16;
const VECTOR_MASKED: u32 = 1;
/// Message control (capability byte 2): table size - 1 in bits 10:0, function mask bit 14,
/// enable bit 15.
pub const CONTROL_MASK_ALL: u16 = 1 << 14;
pub const CONTROL_ENABLE: u16 = 1 << 15;
pub const CAP_ID: u8 = 0x11;

/// The next free GSI, and the MSI message (address, data) each routed GSI sends.
type MsiRoutes = (u32, BTreeMap<u32, (u64, u32)>);

/// The VM's GSI routing table: the irqchip defaults plus one MSI route per allocated GSI.
pub struct GsiRouting {
    vm: Arc<dyn Vm>,
    inner: Mutex<MsiRoutes>,
}

impl GsiRouting {
    pub fn new(vm: Arc<dyn Vm>) -> Arc<GsiRouting> {
        Arc::new(GsiRouting { vm, inner: Mutex::new((FIRST_MSI_GSI, BTreeMap::new())) })
    }

    pub fn vm(&self) -> &Arc<dyn Vm> {
        &self.vm
    }

    fn allocate(&self) -> u32 {
        let mut inner = self.inner.lock().unwrap();
        inner.0 += 1;
        inner.0 - 1
    }

    /// Routes `gsi` to the message (address, data) and installs the whole table.
    fn set_msi(&self, gsi: u32, address: u64, data: u32) -> Result<(), String> {
        let mut inner = self.inner.lock().unwrap();
        inner.1.insert(gsi, (address, data));
        let mut routes = default_irqchip_routes();
        routes.extend(inner.1.iter().map(|(&gsi, &(address, data))| IrqRoute::Msi { gsi, address, data }));
        self.vm.set_gsi_routing(&routes).map_err(|e| e.to_string())
    }
}

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

/// Where an MSI-X vector's interrupts go.
pub trait MsiSink: Send {
    /// Sends vector `v` (already routed to `address`/`data`).
    fn send(&mut self, v: usize, address: u64, data: u32) -> Result<(), String>;
}

/// KVM delivery: a GSI and an irqfd per vector.
pub struct IrqfdSink {
    routing: Arc<GsiRouting>,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
    routed: Vec<Option<(u64, u32)>>,
}

impl IrqfdSink {
    pub fn new(routing: Arc<GsiRouting>, vectors: usize) -> Result<IrqfdSink, String> {
        let mut gsis = Vec::new();
        let mut irqfds = Vec::new();
        for _ in 0..vectors {
            let gsi = routing.allocate();
            let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
            routing.vm().register_irqfd(&fd, gsi).map_err(|e| e.to_string())?;
            gsis.push(gsi);
            irqfds.push(fd);
        }
        Ok(IrqfdSink { routing, gsis, irqfds, routed: vec![None; vectors] })
    }
}

impl MsiSink for IrqfdSink {
    fn send(&mut self, v: usize, address: u64, data: u32) -> Result<(), String> {
        if self.routed[v] != Some((address, data)) {
            self.routing.set_msi(self.gsis[v], address, data)?;
            self.routed[v] = Some((address, data));
        }
        self.irqfds[v].write(1).map_err(|e| format!("irqfd: {e}"))
    }
}

/// The table and pending bits in a snapshot (the control bits are in configuration space).
#[derive(Serialize, Deserialize)]
pub struct MsixState {
    entries: Vec<Entry>,
    pending: Vec<bool>,
}

/// A function's MSI-X state: table, pending bits and the capability's control bits.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    masked: bool,
    sink: Box<dyn MsiSink>,
    /// Delivery failures (routing refused by the host), for the log.
    pub failures: u64,
}

impl Msix {
    pub fn new(vectors: usize, sink: Box<dyn MsiSink>) -> Msix {
        Msix {
            entries: vec![Entry { control: VECTOR_MASKED, ..Default::default() }; vectors],
            pending: vec![false; vectors],
            enabled: false,
            masked: false,
            sink,
            failures: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the driver turned MSI-X on (else the function signals through INTx#).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The capability's message control as the guest last wrote it.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.masked = control & CONTROL_MASK_ALL != 0;
        self.flush_pending();
    }

    /// Table access at byte `offset`: dword or qword, naturally aligned; others read 0/are dropped.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let v = (offset / ENTRY_SIZE) as usize;
        let Some(e) = self.entries.get(v) else { return };
        let image: [u32; 4] = [e.address as u32, (e.address >> 32) as u32, e.data, e.control];
        let bytes: Vec<u8> = image.iter().flat_map(|d| d.to_le_bytes()).collect();
        let at = (offset % ENTRY_SIZE) as usize;
        if matches!(data.len(), 4 | 8) && at.is_multiple_of(data.len()) {
            data.copy_from_slice(&bytes[at..at + data.len()]);
        }
    }

    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let v = (offset / ENTRY_SIZE) as usize;
        let at = (offset % ENTRY_SIZE) as usize;
        if v >= self.entries.len() || !matches!(data.len(), 4 | 8) || !at.is_multiple_of(data.len()) {
            return;
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let value = u32::from_le_bytes(chunk.try_into().unwrap());
            let e = &mut self.entries[v];
            match at / 4 + i {
                0 => e.address = (e.address & !0xffff_ffff) | u64::from(value),
                1 => e.address = (e.address & 0xffff_ffff) | u64::from(value) << 32,
                2 => e.data = value,
                _ => e.control = value & VECTOR_MASKED,
            }
        }
        self.flush_pending();
    }

    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            *b = (0..8).filter(|bit| self.pending.get(first + bit) == Some(&true)).fold(0, |acc, bit| acc | 1 << bit);
        }
    }

    /// Raises vector `v`: sent now, or remembered in the PBA while masked. Returns false when
    /// MSI-X is off or `v` is not a vector of the table.
    pub fn trigger(&mut self, v: u16) -> bool {
        let v = usize::from(v);
        if !self.enabled || v >= self.entries.len() {
            return false;
        }
        if self.masked || self.entries[v].control & VECTOR_MASKED != 0 {
            self.pending[v] = true;
        } else {
            let e = self.entries[v];
            if let Err(e) = self.sink.send(v, e.address, e.data) {
                self.failures += 1;
                if self.failures == 1 {
                    crate::logger::log(format!("MSI-X delivery failed: {e}"));
                }
            }
        }
        true
    }

    pub fn save(&self) -> MsixState {
        MsixState { entries: self.entries.clone(), pending: self.pending.clone() }
    }

    /// Takes a saved table back (routes follow at the first interrupt of each vector); then
    /// `set_control` from the restored configuration space.
    pub fn restore(&mut self, s: &MsixState) -> Result<(), String> {
        if s.entries.len() != self.entries.len() || s.pending.len() != self.pending.len() {
            return Err(format!("MSI-X table of {} vectors, expected {}", s.entries.len(), self.entries.len()));
        }
        self.entries = s.entries.iter().map(|e| Entry { control: e.control & VECTOR_MASKED, ..*e }).collect();
        self.pending = s.pending.clone();
        Ok(())
    }

    fn flush_pending(&mut self) {
        if !self.enabled || self.masked {
            return;
        }
        for v in 0..self.entries.len() {
            if self.pending[v] && self.entries[v].control & VECTOR_MASKED == 0 {
                self.pending[v] = false;
                self.trigger(v as u16);
            }
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Records what would be sent.
    #[derive(Clone, Default)]
    pub struct Recorder(pub Arc<Mutex<Vec<(usize, u64, u32)>>>);

    impl MsiSink for Recorder {
        fn send(&mut self, v: usize, address: u64, data: u32) -> Result<(), String> {
            self.0.lock().unwrap().push((v, address, data));
            Ok(())
        }
    }

    #[test]
    fn masking_pending_and_delivery() {
        let rec = Recorder::default();
        let mut m = Msix::new(2, Box::new(rec.clone()));
        assert!(!m.trigger(0), "disabled");
        m.set_control(CONTROL_ENABLE);
        m.table_write(16, &0xfee0_1000u32.to_le_bytes());
        m.table_write(24, &0x4041u32.to_le_bytes());
        assert!(m.trigger(1), "masked vector: pending");
        let mut pba = [0u8; 8];
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        assert!(rec.0.lock().unwrap().is_empty());
        m.table_write(28, &0u32.to_le_bytes()); // unmask: the pending message goes out
        assert_eq!(rec.0.lock().unwrap().as_slice(), &[(1, 0xfee0_1000, 0x4041)]);
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0);
        let mut d = [0u8; 8];
        m.table_read(16, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0xfee0_1000);
        // Out-of-table vectors and odd accesses are ignored.
        assert!(!m.trigger(7));
        m.table_write(3, &[1, 2, 3, 4]);
        m.table_write(0x1000, &[1, 2, 3, 4]);
        let mut b = [0xaau8; 2];
        m.table_read(16, &mut b);
        assert_eq!(b, [0, 0]);
        // Function mask holds everything back.
        m.set_control(CONTROL_ENABLE | CONTROL_MASK_ALL);
        m.trigger(1);
        assert_eq!(rec.0.lock().unwrap().len(), 1);
        m.set_control(CONTROL_ENABLE);
        assert_eq!(rec.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_restored_table_delivers_what_was_pending() {
        let mut m = Msix::new(2, Box::new(Recorder::default()));
        m.set_control(CONTROL_ENABLE);
        m.table_write(0, &0xfee0_0000u64.to_le_bytes());
        m.table_write(8, &0x31u32.to_le_bytes());
        m.table_write(12, &1u32.to_le_bytes());
        m.trigger(0);
        let saved = serde_json::to_string(&m.save()).unwrap();
        let rec = Recorder::default();
        let mut n = Msix::new(2, Box::new(rec.clone()));
        n.restore(&serde_json::from_str(&saved).unwrap()).unwrap();
        n.set_control(CONTROL_ENABLE);
        assert!(rec.0.lock().unwrap().is_empty(), "still masked");
        n.table_write(12, &0u32.to_le_bytes());
        assert_eq!(rec.0.lock().unwrap().as_slice(), &[(0, 0xfee0_0000, 0x31)]);
        assert!(Msix::new(3, Box::new(Recorder::default())).restore(&n.save()).is_err());
    }
}
