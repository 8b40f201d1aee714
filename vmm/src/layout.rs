//! Guest physical and I/O-port layout shared by boot code and devices.

/// Boot GDT and IDT (the kernel replaces both early).
pub const BOOT_GDT: u64 = 0x500;
pub const BOOT_IDT: u64 = 0x520;
/// Linux `setup_data` chain (an RNG seed).
pub const SETUP_DATA: u64 = 0x6000;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack top for the boot vCPU.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity-mapping page tables for the first 4 GiB: PML4, one PDPT, four PDs of 2 MiB pages.
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 0x10000;
/// Start of the BIOS-reserved area below 1 MiB; the MP table lives here.
pub const EBDA: u64 = 0x9fc00;
/// ACPI tables (RSDP first, so legacy scans of 0xe0000-0xfffff find it).
pub const ACPI_TABLES: u64 = 0xe0000;
pub const ACPI_TABLES_END: u64 = 0x100000;
/// Where the kernel is loaded.
pub const HIMEM: u64 = 0x100000;
/// RAM below 4 GiB ends here; the rest of RAM is placed from 4 GiB up.
pub const MMIO_HOLE: u64 = 0xb000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// The Q35 MMCONFIG window (256 buses) where UEFI firmware enables it, at the start of the hole.
pub const PCIE_ECAM: u64 = MMIO_HOLE;
pub const PCIE_ECAM_SIZE: u64 = 0x1000_0000;
/// 32-bit PCI BAR window inside the hole, below the IOAPIC.
pub const PCI_MMIO_START: u64 = PCIE_ECAM + PCIE_ECAM_SIZE;
pub const PCI_MMIO_END: u64 = 0xfec0_0000;
pub const IOAPIC: u64 = 0xfec0_0000;
pub const LAPIC: u64 = 0xfee0_0000;

/// ISA interrupt lines.
pub const IRQ_COM1: u32 = 4;
pub const IRQ_COM2: u32 = 3;
pub const IRQ_SCI: u32 = 9;

/// I/O ports.
pub const PORT_COM1: u16 = 0x3f8;
pub const PORT_COM2: u16 = 0x2f8;
pub const PORT_I8042: u16 = 0x60; // data at 0x60, command/status at 0x64
pub const PORT_RTC: u16 = 0x70;
pub const PORT_PCI_CONFIG: u16 = 0xcf8;
/// QEMU's ISA pvpanic port.
pub const PORT_PVPANIC: u16 = 0x505;
/// ACPI fixed hardware: PM1a event block (status+enable), PM1a control, PM timer.
pub const PORT_PM1A_EVT: u16 = 0x600;
pub const PORT_PM1A_CNT: u16 = 0x604;
pub const PORT_PM_TMR: u16 = 0x608;
