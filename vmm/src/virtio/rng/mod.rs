//! `virtio-rnd`: an entropy device (virtio type 4) that fills the guest's buffers from the host's
//! `getrandom`.

mod device;

pub use device::Rng;
