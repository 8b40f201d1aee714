//! Errors the methods return, with their JSON-RPC codes (listed in API.md).

use serde_json::Value;
use std::fmt;

/// Application error codes (JSON-RPC reserves -32768..-32000 for itself; the server-error range
/// -32099..-32000 is ours).
pub mod code {
    pub const INTERNAL: i64 = -32000;
    pub const NOT_FOUND: i64 = -32001;
    pub const IN_USE: i64 = -32002;
    pub const ALREADY_EXISTS: i64 = -32003;
    pub const CHECKSUM_MISMATCH: i64 = -32004;
    pub const BAD_ARCHIVE: i64 = -32005;
    pub const DOWNLOAD_FAILED: i64 = -32006;
    pub const NO_MATCHING_BOX: i64 = -32007;
    pub const BAD_BOX: i64 = -32008;
    pub const WRONG_STATE: i64 = -32009;
    pub const VMM_FAILED: i64 = -32010;
    pub const SSH_FAILED: i64 = -32011;
    pub const NETWORK_FAILED: i64 = -32012;
    pub const CANCELLED: i64 = -32013;
    pub const BAD_SAVED_STATE: i64 = -32014;
    pub const INVALID_PARAMS: i64 = -32602;
}

#[derive(Debug)]
pub struct Error {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: i64, message: impl Into<String>) -> Error {
        Error { code, message: message.into(), data: None }
    }
    pub fn with_data(mut self, data: Value) -> Error {
        self.data = Some(data);
        self
    }
    pub fn internal(m: impl Into<String>) -> Error {
        Error::new(code::INTERNAL, m)
    }
    pub fn invalid_params(m: impl Into<String>) -> Error {
        Error::new(code::INVALID_PARAMS, m)
    }
    /// -32602 for one wrong param, named in `data.field`.
    pub fn bad_param(field: &str, m: impl Into<String>) -> Error {
        Error::invalid_params(m).with_data(serde_json::json!({ "field": field }))
    }
    pub fn not_found(m: impl Into<String>) -> Error {
        Error::new(code::NOT_FOUND, m)
    }
    pub fn bad_archive(m: impl Into<String>) -> Error {
        Error::new(code::BAD_ARCHIVE, m)
    }
    pub fn bad_box(m: impl Into<String>) -> Error {
        Error::new(code::BAD_BOX, m)
    }
    pub fn download(m: impl Into<String>) -> Error {
        Error::new(code::DOWNLOAD_FAILED, m)
    }
    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        // Errors built by our own readers carry an `Error` inside (e.g. a size bomb detected while
        // decompressing): keep its code.
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let inner = e.into_inner().unwrap().downcast::<Error>().unwrap();
            return *inner;
        }
        Error::internal(e.to_string())
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::other(e)
    }
}

/// Adds context to io errors: `fs::read(p).ctx(|| format!("reading {}", p.display()))`.
pub trait Context<T> {
    fn ctx<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn ctx<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}
