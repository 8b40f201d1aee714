//! A real-KVM test: a real-mode toy guest is stopped right after an IN exit, saved to a file, and
//! carried on by a second VM made from that file. It needs /dev/kvm and fails without it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{load, save, Shape, State};
use crate::hypervisor::{kvm, Vcpu, VcpuExit, Vm, RAX, RBX};
use crate::vm::Devices;

const CODE: u64 = 0x1000;

#[rustfmt::skip]
const PROGRAM: &[u8] = &[
    0xe4, 0x10, // in al, 0x10
    0x00, 0xc3, // add bl, al
    0xe6, 0x11, // out 0x11, al
    0xeb, 0xf8, // jmp CODE
];

fn shape() -> Shape {
    Shape { mem_bytes: 2 << 20, cpus: 1, devices: vec![], pvm: false }
}

/// A VM with `mem` mapped and one vCPU with the host's CPUID.
fn vm_with(mem: &GuestMemoryMmap) -> (kvm::KvmVm, Box<dyn Vcpu>) {
    let vm = kvm::create_vm().expect("this test needs a usable /dev/kvm");
    let region = mem.find_region(GuestAddress(0)).unwrap();
    let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    // SAFETY: the memory outlives the VM (the test drops the VM first).
    unsafe { vm.map_memory(0, 0, region.len(), host) }.unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&vm.supported_cpuid().unwrap()).unwrap();
    (vm, vcpu)
}

/// Runs to the next port exit: an IN of 0x10 gets `input`; returns an OUT's byte.
fn run_to_out(vcpu: &mut dyn Vcpu, input: u8) -> u8 {
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::IoIn(0x10, data) => data[0] = input,
            VcpuExit::IoOut(0x11, data) => return data[0],
            VcpuExit::Interrupted => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

#[test]
fn a_stopped_vcpu_carries_on_in_another_vm() {
    let dir = super::file::tests::tempdir();
    let path = dir.join("toy.snap");
    {
        let mem = crate::memory::create(2 << 20).unwrap();
        mem.write_slice(PROGRAM, GuestAddress(CODE)).unwrap();
        let (vm, mut vcpu) = vm_with(&mem);
        let mut sregs = vcpu.sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vcpu.regs().unwrap();
        regs.rip = CODE;
        regs.rflags = 2;
        vcpu.set_regs(&regs).unwrap();

        assert_eq!(run_to_out(vcpu.as_mut(), 3), 3);
        // Stop right after the next IN exit: the immediate exit still completes the IN.
        match vcpu.run().unwrap() {
            VcpuExit::IoIn(0x10, data) => data[0] = 5,
            other => panic!("expected the IN, got {other:?}"),
        }
        vcpu.set_immediate_exit(true);
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Interrupted));
        let regs = vcpu.regs().unwrap();
        assert_eq!((regs.gpr[RAX] & 0xff, regs.gpr[RBX] & 0xff, regs.rip), (5, 3, CODE + 2));
        let state = State {
            vm: vm.save_state().unwrap(),
            vcpus: vec![vcpu.save_state().unwrap()],
            pvm: None,
            devices: Devices::default().save_state().unwrap(),
        };
        save(&path, &shape(), state, &mem).unwrap();
    }

    let loaded = load(&path, &shape()).unwrap();
    let mem = crate::memory::map_private(&loaded.ram.file, loaded.ram.ram_offset, loaded.ram.ram_len).unwrap();
    let (vm, mut vcpu) = vm_with(&mem);
    vm.restore_state(&loaded.state.vm).unwrap();
    Devices::default().restore_state(&loaded.state.devices).unwrap();
    vcpu.restore_state(&loaded.state.vcpus[0]).unwrap();
    assert_eq!(run_to_out(vcpu.as_mut(), 0), 5);
    assert_eq!(vcpu.regs().unwrap().gpr[RBX] & 0xff, 8);
    assert_eq!(run_to_out(vcpu.as_mut(), 7), 7);
    assert_eq!(vcpu.regs().unwrap().gpr[RBX] & 0xff, 15);
    std::fs::remove_dir_all(&dir).unwrap();
}
