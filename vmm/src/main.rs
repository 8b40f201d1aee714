mod devices;
mod exit;
mod hypervisor;
mod layout;
fn main() {}
