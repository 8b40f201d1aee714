//! `virtio-blk,PATH[,ro][,format=raw|qcow2][,sectorsize=N[/P]]`: a disk image as a virtio block
//! device (type 2). The image is a `crate::disk::Disk` (raw file, or qcow2 with its backing
//! chain); the device sees nothing of its format.
//!
//! One queue per vCPU (VIRTIO_BLK_F_MQ), each served by its own worker thread; the disk takes
//! requests from every queue at once (a raw file with positioned I/O on one shared descriptor),
//! unlike xhyve's single block lock. Data moves between the disk and guest memory through
//! vm-memory's checked volatile slices, so a descriptor pointing outside guest RAM fails that
//! request (VIRTIO_BLK_S_IOERR) and nothing else.
//!
//! Discard and write-zeroes go to the disk (holes punched in a raw file, zero clusters in
//! qcow2); flush makes the disk durable, its own metadata included, and runs too before a
//! snapshot is taken. The device ID (GET_ID) is the image's file name, cut to 20 bytes.

mod device;
mod request;

pub use device::Block;
