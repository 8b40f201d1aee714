//! (integration in progress: the full main is being wired; see vm.rs)
#![allow(dead_code)]
mod boot;
mod cli;
mod cpuid;
mod devices;
mod exit;
mod hypervisor;
mod layout;
mod mac;
mod memory;

fn main() {}
