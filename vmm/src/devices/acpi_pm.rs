//! ACPI fixed hardware at 0x600-0x60b: PM1a status/enable (0-3), PM1a control (4-5) and the PM
//! timer (8-11). It gives the guest a power button (pressed on SIGTERM) and S5 power-off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::bus::PioDevice;
use crate::exit::{ExitLatch, ExitReason};
use crate::hypervisor::Vm;
use crate::layout;

const PM1_STS: u16 = 0;
const PM1_EN: u16 = 2;
const PM1_CNT: u16 = 4;
const PM_TMR: u16 = 8;
const LEN: usize = 12;

/// PM1 status and enable bits (same positions in both registers).
const TMR: u16 = 1 << 0;
const GBL: u16 = 1 << 5;
const PWRBTN: u16 = 1 << 8;
const SLPBTN: u16 = 1 << 9;
const RTC: u16 = 1 << 10;
/// Enables read back as written (ACPICA checks that they do), but only the power button ever
/// raises a status: there are no timer-overflow, global-lock, sleep-button or RTC events.
const EN_WRITABLE: u16 = TMR | GBL | PWRBTN | SLPBTN | RTC;
/// Status bits that assert the SCI when enabled.
const SCI_EVENTS: u16 = PWRBTN;

/// PM1 control: SCI_EN always reads set (no SMI_CMD, always in ACPI mode); SLP_EN is write-only.
const SCI_EN: u16 = 1 << 0;
const BM_RLD: u16 = 1 << 1;
const SLP_TYP: u16 = 7 << 10;
const SLP_EN: u16 = 1 << 13;
/// The DSDT's \_S5 sleep type.
const SLP_TYP_S5: u16 = 5 << 10;

/// The PM timer runs at the ACPI-specified 3.579545 MHz; it is 32 bits wide (FADT TMR_VAL_EXT).
const TMR_HZ: u128 = 3_579_545;

/// Where the SCI goes: the VM's interrupt controllers, or a recorder in tests.
pub trait SciLine: Send {
    fn set_sci(&self, level: bool) -> Result<(), String>;
}

impl SciLine for Arc<dyn Vm> {
    fn set_sci(&self, level: bool) -> Result<(), String> {
        self.set_irq_line(layout::IRQ_SCI, level).map_err(|e| e.to_string())
    }
}

/// The PM registers in a snapshot, and the PM timer's count (it goes on from there).
#[derive(Serialize, Deserialize)]
pub struct AcpiPmState {
    sts: u16,
    en: u16,
    cnt: u16,
    timer: u32,
}

pub struct AcpiPm {
    sts: u16,
    en: u16,
    cnt: u16,
    sci: Box<dyn SciLine>,
    sci_level: bool,
    exit: Arc<ExitLatch>,
    start: Instant,
}

impl AcpiPm {
    pub fn new(sci: impl SciLine + 'static, exit: Arc<ExitLatch>) -> Self {
        AcpiPm { sts: 0, en: 0, cnt: 0, sci: Box::new(sci), sci_level: false, exit, start: Instant::now() }
    }

    /// Sets PWRBTN_STS; the guest sees an SCI if it enabled the button.
    pub fn press_power_button(&mut self) {
        self.sts |= PWRBTN;
        self.update_sci();
    }

    pub fn save(&self) -> AcpiPmState {
        AcpiPmState { sts: self.sts, en: self.en, cnt: self.cnt, timer: self.timer() }
    }

    pub fn restore(&mut self, s: &AcpiPmState) {
        self.sts = s.sts & SCI_EVENTS;
        self.en = s.en & EN_WRITABLE;
        self.cnt = s.cnt & (BM_RLD | SLP_TYP);
        let elapsed = Duration::from_nanos((u128::from(s.timer) * 1_000_000_000 / TMR_HZ) as u64);
        self.start = Instant::now().checked_sub(elapsed).unwrap_or_else(Instant::now);
        self.update_sci();
    }

    fn timer(&self) -> u32 {
        (self.start.elapsed().as_nanos() * TMR_HZ / 1_000_000_000) as u32
    }

    fn control(&mut self, value: u16) {
        self.cnt = value & (BM_RLD | SLP_TYP);
        // Only S5 is advertised, so any other sleep request is ignored.
        if value & SLP_EN != 0 && value & SLP_TYP == SLP_TYP_S5 {
            self.exit.request(ExitReason::PowerOff);
        }
    }

    /// The SCI is level-triggered: it stays up until the guest clears the status or the enable.
    fn update_sci(&mut self) {
        let level = self.sts & self.en & SCI_EVENTS != 0;
        if level != self.sci_level {
            self.sci_level = level;
            if let Err(e) = self.sci.set_sci(level) {
                self.exit.request(ExitReason::Error(format!("ACPI SCI: {e}")));
            }
        }
    }
}

/// The 16-bit register at `reg` after a write of `data` at `offset`: the written bytes laid over
/// `old`, or None if the write misses the register.
fn overlay(reg: u16, offset: u16, data: &[u8], old: u16) -> Option<u16> {
    let mut bytes = old.to_le_bytes();
    let mut hit = false;
    for (port, &b) in (usize::from(offset)..).zip(data) {
        if let Some(byte) = port.checked_sub(usize::from(reg)).and_then(|i| bytes.get_mut(i)) {
            *byte = b;
            hit = true;
        }
    }
    hit.then(|| u16::from_le_bytes(bytes))
}

impl PioDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let mut regs = [0u8; LEN];
        regs[usize::from(PM1_STS)..][..2].copy_from_slice(&self.sts.to_le_bytes());
        regs[usize::from(PM1_EN)..][..2].copy_from_slice(&self.en.to_le_bytes());
        regs[usize::from(PM1_CNT)..][..2].copy_from_slice(&(self.cnt | SCI_EN).to_le_bytes());
        regs[usize::from(PM_TMR)..][..4].copy_from_slice(&self.timer().to_le_bytes());
        for (port, b) in (usize::from(offset)..).zip(data.iter_mut()) {
            *b = regs.get(port).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        // Status bits are write-1-to-clear, so bytes not written count as zeros.
        if let Some(clear) = overlay(PM1_STS, offset, data, 0) {
            self.sts &= !clear;
        }
        if let Some(en) = overlay(PM1_EN, offset, data, self.en) {
            self.en = en & EN_WRITABLE;
        }
        if let Some(cnt) = overlay(PM1_CNT, offset, data, self.cnt) {
            self.control(cnt);
        }
        self.update_sci();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::bus::PioDevice;

    /// Records every change of the SCI line.
    #[derive(Clone, Default)]
    struct Line(Arc<Mutex<Vec<bool>>>);

    impl SciLine for Line {
        fn set_sci(&self, level: bool) -> Result<(), String> {
            self.0.lock().unwrap().push(level);
            Ok(())
        }
    }

    impl Line {
        fn changes(&self) -> Vec<bool> {
            self.0.lock().unwrap().clone()
        }
    }

    fn pm() -> (AcpiPm, Line, Arc<ExitLatch>) {
        let line = Line::default();
        let exit = Arc::new(ExitLatch::default());
        (AcpiPm::new(line.clone(), exit.clone()), line, exit)
    }

    fn read16(pm: &mut AcpiPm, offset: u16) -> u16 {
        let mut b = [0; 2];
        pm.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn power_button_raises_sci_only_when_enabled() {
        let (mut pm, line, _) = pm();
        pm.press_power_button();
        assert_eq!(read16(&mut pm, PM1_STS), PWRBTN);
        assert!(line.changes().is_empty(), "disabled: no SCI");
        pm.write(PM1_STS, &PWRBTN.to_le_bytes());
        assert_eq!(read16(&mut pm, PM1_STS), 0);

        pm.write(PM1_EN, &PWRBTN.to_le_bytes());
        assert_eq!(read16(&mut pm, PM1_EN), PWRBTN);
        pm.press_power_button();
        assert_eq!(line.changes(), [true]);
        // Writing zeros, or clearing other bits, keeps it up; writing 1 to PWRBTN_STS drops it.
        pm.write(PM1_STS, &[0xff, 0x00]);
        pm.write(PM1_STS, &0u16.to_le_bytes());
        assert_eq!(line.changes(), [true]);
        pm.write(PM1_STS + 1, &[0x01]);
        assert_eq!(line.changes(), [true, false]);
        assert_eq!(read16(&mut pm, PM1_STS), 0);
    }

    #[test]
    fn enabling_a_pending_press_raises_sci() {
        let (mut pm, line, _) = pm();
        pm.press_power_button();
        // One dword write covering status (no bits) and enable (PWRBTN_EN).
        pm.write(PM1_STS, &(u32::from(PWRBTN) << 16).to_le_bytes());
        assert_eq!(line.changes(), [true]);
        pm.write(PM1_EN, &0u16.to_le_bytes());
        assert_eq!(line.changes(), [true, false]);
    }

    #[test]
    fn s5_powers_off() {
        let (mut pm, _, exit) = pm();
        assert_eq!(read16(&mut pm, PM1_CNT), SCI_EN);
        pm.write(PM1_CNT, &SLP_TYP_S5.to_le_bytes());
        assert!(!exit.is_set(), "SLP_TYP without SLP_EN");
        assert_eq!(read16(&mut pm, PM1_CNT), SCI_EN | SLP_TYP_S5);
        pm.write(PM1_CNT, &(SLP_EN | 3 << 10).to_le_bytes());
        assert!(!exit.is_set(), "S3 is not supported");
        assert_eq!(read16(&mut pm, PM1_CNT) & SLP_EN, 0, "SLP_EN is write-only");
        pm.write(PM1_CNT + 1, &[((SLP_EN | SLP_TYP_S5) >> 8) as u8]);
        assert_eq!(exit.wait_timeout(std::time::Duration::ZERO), Some(ExitReason::PowerOff));
    }

    #[test]
    fn timer_counts_at_3_58_mhz() {
        let (mut pm, _, _) = pm();
        let mut b = [0; 4];
        pm.read(PM_TMR, &mut b);
        let t0 = u32::from_le_bytes(b);
        std::thread::sleep(std::time::Duration::from_millis(20));
        pm.read(PM_TMR, &mut b);
        let ticks = u32::from_le_bytes(b).wrapping_sub(t0);
        // 20 ms is 71591 ticks; allow for a slow host.
        assert!((71_000..3_579_545).contains(&ticks), "{ticks}");
        pm.write(PM_TMR, &[0; 4]);
        pm.read(PM_TMR, &mut b);
        assert!(u32::from_le_bytes(b).wrapping_sub(t0) >= ticks, "read-only");
    }
}
