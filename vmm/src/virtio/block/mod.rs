//! `virtio-blk,PATH[,ro][,sectorsize=N[/P]]`: a raw image file as a virtio block device (type 2).
//!
//! One queue per vCPU (VIRTIO_BLK_F_MQ), each served by its own worker thread with positioned
//! I/O (`pread`/`pwrite` on one shared file descriptor): requests on different queues never wait
//! for each other, unlike xhyve's single block lock. Data moves between the file and guest memory
//! through vm-memory's checked volatile accessors, so a descriptor pointing outside guest RAM
//! fails that request (VIRTIO_BLK_S_IOERR) and nothing else.
//!
//! Discard punches holes (`fallocate(PUNCH_HOLE|KEEP_SIZE)`), so a sparse image gets smaller on
//! disk; write-zeroes uses `ZERO_RANGE` (or punches holes when the driver allows unmapping), with
//! a plain write of zeroes where the file system has neither. Flush is `fdatasync`. The device ID
//! (GET_ID) is the image's file name, cut to 20 bytes.

mod device;
mod io;
mod request;

pub use device::Block;
