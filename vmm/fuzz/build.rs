//! Extracts what vmm/src/virtio/block.rs needs from vmm/src/virtio/mod.rs (the device-type
//! constants, `QueueBroken`, the `VirtioDevice` trait, `drain_queue`) into $OUT_DIR/shim.rs, so
//! the fuzz targets always compile against the VMM's current definitions.
use std::path::Path;

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let a = s.find(start).unwrap_or_else(|| panic!("virtio/mod.rs: '{start}' not found"));
    let b = a + s[a..].find(end).unwrap_or_else(|| panic!("virtio/mod.rs: '{end}' not found"));
    &s[a..b]
}

fn main() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../src/virtio/mod.rs");
    println!("cargo:rerun-if-changed={}", src.display());
    let m = std::fs::read_to_string(&src).unwrap();
    let shim = format!(
        "#[allow(dead_code)] mod shim_items {{\nuse std::sync::Arc;\nuse virtio_queue::Queue;\n\
         use vm_memory::GuestMemoryMmap;\nuse vmm_sys_util::eventfd::EventFd;\n{}\n{}\n}}\npub use shim_items::*;\n",
        between(&m, "/// Device types", "/// Builds the PCI function"),
        between(&m, "/// Processes everything available", "/// Crafted queues"),
    );
    std::fs::write(Path::new(&std::env::var("OUT_DIR").unwrap()).join("shim.rs"), shim).unwrap();
}
