//! `xhyve-provider` as a library: the daemon (`server`), its methods and everything behind them.
//! The binary (`src/main.rs`) is the command line; the fuzz targets (provider/fuzz) reach the
//! request handling, box unpacking, catalogs and DHCP through `fuzzing`.

mod boxes;
pub mod client;
mod error;
pub mod fuzzing;
pub mod home;
mod jsonrpc;
mod logger;
pub mod machines;
mod network;
mod nic;
mod rpc;
#[cfg(test)]
mod schema_tests;
pub mod server;
mod size;
mod state;
