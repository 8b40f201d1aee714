//! MC146818 CMOS RTC and NVRAM at ports 0x70 (index) and 0x71 (data).
//!
//! The clock is the host's (UTC, or local time like bhyve without `-u`) plus an offset the guest
//! sets by writing the time registers. No periodic, alarm or update interrupts: Linux reads the
//! time at boot and keeps its own, so IRQ 8 is never raised and register C has no flags.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const SEC: u8 = 0x00;
const MIN: u8 = 0x02;
const HOUR: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// Shutdown status: 0xfe tells OVMF's SEC and PEI that this is an S3 resume.
const SHUTDOWN_STATUS: u8 = 0x0f;
pub const SHUTDOWN_S3_RESUME: u8 = 0xfe;
const CENTURY: u8 = 0x32;
const TIME_REGS: [u8; 8] = [SEC, MIN, HOUR, WEEKDAY, DAY, MONTH, YEAR, CENTURY];

/// Register A: 32.768 kHz divider, 1024 Hz rate. UIP (bit 7) never reads set: updates are instant.
const REG_A_DEFAULT: u8 = 0x26;
const UIP: u8 = 0x80;
/// Register B: SET freezes the clock for the guest to write it; DM selects binary over BCD;
/// 24H selects 24-hour over 12-hour with a PM flag.
const SET: u8 = 0x80;
const DM_BINARY: u8 = 0x04;
const HOURS_24: u8 = 0x02;
const PM: u8 = 0x80;
/// Register D: VRT, the battery is fine.
const VRT: u8 = 0x80;

/// NVRAM memory-size cells, as BIOSes and bhyve fill them (little-endian).
const BASE_MEM_KB: u8 = 0x15;
const EXT_MEM_KB: u8 = 0x17;
const EXT_MEM_KB_COPY: u8 = 0x30;
const MEM_ABOVE_16M_64K: u8 = 0x34;
const MEM_ABOVE_4G_64K: u8 = 0x5b;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The RTC in a snapshot: what the guest wrote (index, registers, NVRAM) and its clock's
/// offset from the host's.
#[derive(Serialize, Deserialize)]
pub struct CmosState {
    index: u8,
    ram: Vec<u8>,
    offset: i64,
}

pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    localtime: bool,
    /// Seconds the guest's clock runs ahead of the host's.
    offset: i64,
    /// What the next read of the shutdown status returns, once (`firmware::preload`).
    shutdown_status_once: Option<u8>,
}

impl Cmos {
    pub fn new(mem_below_4g: u64, mem_above_4g: u64, localtime: bool) -> Self {
        let mut ram = [0; 128];
        ram[usize::from(REG_A)] = REG_A_DEFAULT;
        ram[usize::from(REG_B)] = HOURS_24;
        let mut put = |at: u8, bytes: &[u8]| ram[usize::from(at)..][..bytes.len()].copy_from_slice(bytes);
        put(BASE_MEM_KB, &640u16.to_le_bytes());
        // Extended memory above 1 MiB, in KiB, saturating at 63 MiB as the 16-bit cells always have.
        let ext_kb = (mem_below_4g.saturating_sub(MIB) / KIB).min(0xfc00) as u16;
        put(EXT_MEM_KB, &ext_kb.to_le_bytes());
        put(EXT_MEM_KB_COPY, &ext_kb.to_le_bytes());
        let above_16m = (mem_below_4g.saturating_sub(16 * MIB) / (64 * KIB)).min(0xffff) as u16;
        put(MEM_ABOVE_16M_64K, &above_16m.to_le_bytes());
        let above_4g = (mem_above_4g / (64 * KIB)).min(0xff_ffff) as u32;
        put(MEM_ABOVE_4G_64K, &above_4g.to_le_bytes()[..3]);
        if localtime {
            // The first localtime_r loads the host's time zone: now, not later on a vCPU thread,
            // whose seccomp filter opens no file.
            utc_offset(0);
        }
        Cmos { index: 0, ram, localtime, offset: 0, shutdown_status_once: None }
    }

    /// The next read of the shutdown status register (and only that one) returns `value`.
    pub fn set_shutdown_status_once(&mut self, value: u8) {
        self.shutdown_status_once = Some(value);
    }

    pub fn save(&self) -> CmosState {
        CmosState { index: self.index, ram: self.ram.to_vec(), offset: self.offset }
    }

    pub fn restore(&mut self, s: &CmosState) -> Result<(), String> {
        self.ram = s.ram.as_slice().try_into().map_err(|_| format!("CMOS of {} bytes, expected 128", s.ram.len()))?;
        self.index = s.index;
        self.offset = s.offset;
        Ok(())
    }

    /// The host clock in the RTC's time zone, in seconds since 1970.
    fn host_now(&self) -> i64 {
        let utc = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        if self.localtime {
            utc + utc_offset(utc)
        } else {
            utc
        }
    }

    fn reg_b(&self) -> u8 {
        self.ram[usize::from(REG_B)]
    }

    fn encode(&self, v: u32) -> u8 {
        if self.reg_b() & DM_BINARY != 0 {
            v as u8
        } else {
            (((v / 10) << 4) | (v % 10)) as u8
        }
    }

    fn decode(&self, b: u8) -> u32 {
        if self.reg_b() & DM_BINARY != 0 {
            u32::from(b)
        } else {
            u32::from(b >> 4) * 10 + u32::from(b & 0xf)
        }
    }

    /// Copies the running clock into the time registers.
    fn latch_clock(&mut self) {
        let t = self.host_now() + self.offset;
        let (days, secs) = (t.div_euclid(86400), t.rem_euclid(86400) as u32);
        let (year, month, day) = civil_from_days(days);
        let hour = secs / 3600;
        let hour = if self.reg_b() & HOURS_24 != 0 {
            self.encode(hour)
        } else {
            let h12 = match hour % 12 {
                0 => 12,
                h => h,
            };
            self.encode(h12) | if hour >= 12 { PM } else { 0 }
        };
        let weekday = (days + 4).rem_euclid(7) as u32 + 1; // 1970-01-01 was a Thursday; Sunday is 1
        let fields = [
            (SEC, self.encode(secs % 60)),
            (MIN, self.encode(secs / 60 % 60)),
            (HOUR, hour),
            (WEEKDAY, self.encode(weekday)),
            (DAY, self.encode(day)),
            (MONTH, self.encode(month)),
            (YEAR, self.encode(year.rem_euclid(100) as u32)),
            (CENTURY, self.encode(year.div_euclid(100) as u32)),
        ];
        for (reg, v) in fields {
            self.ram[usize::from(reg)] = v;
        }
    }

    /// Makes the clock run from the time the guest wrote into the registers.
    fn apply_time(&mut self) {
        let r = |reg: u8| self.ram[usize::from(reg)];
        let hour = if self.reg_b() & HOURS_24 != 0 {
            self.decode(r(HOUR))
        } else {
            self.decode(r(HOUR) & !PM) % 12 + if r(HOUR) & PM != 0 { 12 } else { 0 }
        };
        let year = i64::from(self.decode(r(CENTURY))) * 100 + i64::from(self.decode(r(YEAR)));
        let days = days_from_civil(year, self.decode(r(MONTH)), self.decode(r(DAY)));
        let secs = i64::from(hour) * 3600 + i64::from(self.decode(r(MIN))) * 60 + i64::from(self.decode(r(SEC)));
        self.offset = days * 86400 + secs - self.host_now();
    }

    fn read_reg(&mut self, reg: u8) -> u8 {
        match reg {
            _ if TIME_REGS.contains(&reg) => {
                if self.reg_b() & SET == 0 {
                    self.latch_clock();
                }
                self.ram[usize::from(reg)]
            }
            REG_C => 0,
            REG_D => VRT,
            SHUTDOWN_STATUS => self.shutdown_status_once.take().unwrap_or(self.ram[usize::from(reg)]),
            _ => self.ram[usize::from(reg)],
        }
    }

    fn write_reg(&mut self, reg: u8, v: u8) {
        match reg {
            _ if TIME_REGS.contains(&reg) => {
                if self.reg_b() & SET != 0 {
                    self.ram[usize::from(reg)] = v;
                } else {
                    // A running clock takes a single field at once, the others unchanged.
                    self.latch_clock();
                    self.ram[usize::from(reg)] = v;
                    self.apply_time();
                }
            }
            REG_A => self.ram[usize::from(REG_A)] = v & !UIP,
            REG_B => {
                let was_set = self.reg_b() & SET != 0;
                // The time written while SET was held is in the format that was in force.
                if was_set && v & SET == 0 {
                    self.apply_time();
                }
                self.ram[usize::from(REG_B)] = v;
                if !was_set && v & SET != 0 {
                    self.latch_clock();
                }
            }
            REG_C | REG_D => {}
            _ => self.ram[usize::from(reg)] = v,
        }
    }
}

impl crate::bus::PioDevice for Cmos {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        for (port, b) in (offset..).zip(data.iter_mut()) {
            // The index register is write-only.
            *b = if port == 1 { self.read_reg(self.index) } else { 0xff };
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        for (port, &b) in (offset..).zip(data) {
            match port {
                // Bit 7 masks NMIs on real hardware; there is nothing to mask here.
                0 => self.index = b & 0x7f,
                1 => self.write_reg(self.index, b),
                _ => {}
            }
        }
    }
}

/// Seconds local time is ahead of UTC at `utc` (host time zone, with DST).
fn utc_offset(utc: i64) -> i64 {
    let t = utc as libc::time_t;
    // SAFETY: localtime_r writes only into the zeroed `tm` we pass.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff
        }
    }
}

/// (year, month 1-12, day 1-31) of a day number counted from 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Inverse of `civil_from_days`; out-of-range fields (a guest's nonsense) just roll over.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * if month > 2 { month - 3 } else { month + 9 } + 2) / 5 + day - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::PioDevice;

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0, &[reg]);
        let mut b = [0];
        c.read(1, &mut b);
        b[0]
    }

    fn write(c: &mut Cmos, reg: u8, v: u8) {
        c.write(0, &[reg | 0x80]); // with the NMI-mask bit, as Linux does
        c.write(1, &[v]);
    }

    fn bcd(b: u8) -> u32 {
        u32::from(b >> 4) * 10 + u32::from(b & 0xf)
    }

    /// Sets 2024-02-29 (a Thursday) 20:34:10 in BCD, 24-hour mode, the way Linux does.
    fn set_known_time(c: &mut Cmos) {
        write(c, REG_B, HOURS_24 | SET);
        for (reg, v) in
            [(SEC, 0x10), (MIN, 0x34), (HOUR, 0x20), (DAY, 0x29), (MONTH, 0x02), (YEAR, 0x24), (CENTURY, 0x20)]
        {
            write(c, reg, v);
        }
        assert_eq!(read(c, HOUR), 0x20, "frozen while SET");
        write(c, REG_B, HOURS_24);
    }

    #[test]
    fn host_date() {
        let mut c = Cmos::new(MIB, 0, false);
        let gmtime = || {
            let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as libc::time_t;
            // SAFETY: gmtime_r writes only into the zeroed `tm`.
            let tm = unsafe {
                let mut tm: libc::tm = std::mem::zeroed();
                libc::gmtime_r(&t, &mut tm);
                tm
            };
            (tm.tm_year as u32 + 1900, tm.tm_mon as u32 + 1, tm.tm_mday as u32, tm.tm_wday as u32 + 1)
        };
        let before = gmtime();
        let rtc = (
            bcd(read(&mut c, CENTURY)) * 100 + bcd(read(&mut c, YEAR)),
            bcd(read(&mut c, MONTH)),
            bcd(read(&mut c, DAY)),
            bcd(read(&mut c, WEEKDAY)),
        );
        assert!(rtc == before || rtc == gmtime(), "{rtc:?} vs {before:?}");
        assert_eq!((read(&mut c, REG_A), read(&mut c, REG_B), read(&mut c, REG_D)), (0x26, 0x02, 0x80));
    }

    #[test]
    fn shutdown_status_once() {
        let mut c = Cmos::new(MIB, 0, false);
        assert_eq!(read(&mut c, SHUTDOWN_STATUS), 0);
        c.set_shutdown_status_once(SHUTDOWN_S3_RESUME);
        assert_eq!(read(&mut c, SHUTDOWN_STATUS), SHUTDOWN_S3_RESUME);
        assert_eq!(read(&mut c, SHUTDOWN_STATUS), 0, "only the first read");
        write(&mut c, SHUTDOWN_STATUS, 5);
        assert_eq!(read(&mut c, SHUTDOWN_STATUS), 5);
    }

    #[test]
    fn set_time_and_formats() {
        let mut c = Cmos::new(MIB, 0, false);
        set_known_time(&mut c);
        let expected = days_from_civil(2024, 2, 29) * 86400 + 20 * 3600 + 34 * 60 + 10;
        assert!((c.offset - (expected - c.host_now())).abs() <= 1);
        assert_eq!((read(&mut c, CENTURY), read(&mut c, YEAR), read(&mut c, MONTH)), (0x20, 0x24, 0x02));
        assert_eq!((read(&mut c, DAY), read(&mut c, WEEKDAY), read(&mut c, HOUR)), (0x29, 5, 0x20));
        assert!((0x10..=0x12).contains(&read(&mut c, SEC)));

        write(&mut c, REG_B, HOURS_24 | DM_BINARY);
        assert_eq!((read(&mut c, YEAR), read(&mut c, DAY), read(&mut c, HOUR), read(&mut c, MIN)), (24, 29, 20, 34));
        assert!((10..=12).contains(&read(&mut c, SEC)));
        write(&mut c, REG_B, DM_BINARY);
        assert_eq!(read(&mut c, HOUR), PM | 8, "12-hour binary");
        write(&mut c, REG_B, 0);
        assert_eq!(read(&mut c, HOUR), PM | 0x08, "12-hour BCD");

        // A single field written while the clock runs, in 12-hour mode: 9 AM.
        write(&mut c, HOUR, 0x09);
        write(&mut c, REG_B, HOURS_24);
        assert_eq!((read(&mut c, HOUR), read(&mut c, MIN), read(&mut c, DAY)), (0x09, 0x34, 0x29));
    }

    #[test]
    fn ram_and_status_registers() {
        let mut c = Cmos::new(2 << 30, 1 << 30, false);
        let word = |c: &mut Cmos, reg: u8| u16::from_le_bytes([read(c, reg), read(c, reg + 1)]);
        assert_eq!(word(&mut c, BASE_MEM_KB), 640);
        assert_eq!((word(&mut c, EXT_MEM_KB), word(&mut c, EXT_MEM_KB_COPY)), (0xfc00, 0xfc00));
        assert_eq!(word(&mut c, MEM_ABOVE_16M_64K), 0x7f00, "2 GiB - 16 MiB in 64 KiB units");
        assert_eq!([read(&mut c, 0x5b), read(&mut c, 0x5c), read(&mut c, 0x5d)], [0x00, 0x40, 0x00]);
        write(&mut c, 0x40, 0xab);
        assert_eq!(read(&mut c, 0x40), 0xab);
        write(&mut c, REG_A, 0xa6);
        assert_eq!(read(&mut c, REG_A), 0x26, "UIP is read-only");
        write(&mut c, REG_D, 0);
        assert_eq!((read(&mut c, REG_C), read(&mut c, REG_D)), (0, VRT));
        let mut b = [0];
        c.read(0, &mut b);
        assert_eq!(b[0], 0xff, "index port is write-only");
    }

    #[test]
    fn civil_round_trip() {
        for days in [-719_468, -1, 0, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }
}
