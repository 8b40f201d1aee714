//! DSDT: the S5 sleep type that makes Linux register ACPI power-off, the PCI host bridge with its
//! interrupt routing, and the pvpanic device.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Name, Package, PackageBuilder, ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{OEM_ID, OEM_REVISION};
use crate::layout;
use crate::pci::intx::IntxRoute;

/// SLP_TYP for S5, what `devices::acpi_pm` treats as power-off (bhyve's value).
const SLP_TYP_S5: u8 = 5;

pub fn dsdt(routes: &[IntxRoute]) -> Sdt {
    let mut body = Vec::new();
    // Package {SLP_TYPa, SLP_TYPb, reserved, reserved}
    let s5 = Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &0u8, &0u8]);
    Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);
    pci_host_bridge(routes, &mut body);
    pvpanic(&mut body);
    // Revision 2: 64-bit AML integers.
    let mut t = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"BVDSDT  ", OEM_REVISION);
    t.append_slice(&body);
    t
}

/// \_SB.PCI0: PCI bus 0 behind config mechanism #1, decoding all I/O ports but 0xcf8-0xcff and the
/// 32-bit MMIO window, so the guest keeps BARs inside them; `_PRT` wires the slots' interrupt pins.
fn pci_host_bridge(routes: &[IntxRoute], sink: &mut Vec<u8>) {
    let buses = AddressSpace::<u16>::new_bus_number(0, 0xff);
    let config = IO::new(layout::PORT_PCI_CONFIG, layout::PORT_PCI_CONFIG, 1, 8);
    let io_low = AddressSpace::<u16>::new_io(0, layout::PORT_PCI_CONFIG - 1, None);
    let io_high = AddressSpace::<u16>::new_io(layout::PORT_PCI_CONFIG + 8, 0xffff, None);
    let mmio = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        layout::PCI_MMIO_START as u32,
        (layout::PCI_MMIO_END - 1) as u32,
        None,
    );
    let crs = ResourceTemplate::new(vec![&buses, &config, &io_low, &io_high, &mmio]);
    let hid = EISAName::new("PNP0A03");
    let prt = routing_table(routes);
    Scope::new(
        "\\_SB_".into(),
        vec![&Device::new(
            "PCI0".into(),
            vec![
                &Name::new("_HID".into(), &hid),
                &Name::new("_UID".into(), &0u8),
                &Name::new("_BBN".into(), &0u8),
                &Name::new("_CRS".into(), &crs),
                &Name::new("_PRT".into(), &prt),
            ],
        )],
    )
    .to_aml_bytes(sink);
}

/// \_SB.PEVT: QEMU's pvpanic (`devices::pvpanic`), one I/O port, as QEMU describes it.
fn pvpanic(sink: &mut Vec<u8>) {
    let port = IO::new(layout::PORT_PVPANIC, layout::PORT_PVPANIC, 1, 1);
    let crs = ResourceTemplate::new(vec![&port]);
    Scope::new(
        "\\_SB_".into(),
        vec![&Device::new(
            "PEVT".into(),
            vec![&Name::new("_HID".into(), &"QEMU0001"), &Name::new("_CRS".into(), &crs)],
        )],
    )
    .to_aml_bytes(sink);
}

/// `_PRT` entries: Package {address (slot << 16 | 0xffff: any function), pin (0 = INTA#), source 0
/// (no link device: the last field is a GSI), GSI}. The OS takes such GSIs as level-triggered,
/// active-low, which is how `pci::intx` raises them.
fn routing_table(routes: &[IntxRoute]) -> PackageBuilder {
    let mut prt = PackageBuilder::new();
    for r in routes {
        let address = u32::from(r.slot) << 16 | 0xffff;
        prt.add_element(&Package::new(vec![&address, &r.pin, &0u8, &r.gsi]));
    }
    prt
}
