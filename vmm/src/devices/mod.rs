//! The machine's legacy devices on port I/O: UARTs, the i8042, the RTC/CMOS, ACPI PM and pvpanic.

pub mod acpi_pm;
pub mod cmos;
pub mod debugcon;
pub mod fw_cfg;
pub mod i8042;
pub mod pvpanic;
pub mod serial;
