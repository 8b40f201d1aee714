//! A job's cancellation: box.add stops at its next read or write once its client has gone, and
//! its scratch directory goes with it.

use crate::error::{code, Error, Result};
use std::sync::Arc;

/// Asks whether the job should stop.
#[derive(Clone)]
pub struct Cancel(Arc<dyn Fn() -> bool + Send + Sync>);

impl Cancel {
    pub fn when(f: impl Fn() -> bool + Send + Sync + 'static) -> Cancel {
        Cancel(Arc::new(f))
    }

    /// For jobs no client waits on (tests, the fuzz targets).
    pub fn never() -> Cancel {
        Cancel::when(|| false)
    }

    pub fn check(&self) -> Result<()> {
        if (self.0)() {
            return Err(Error::new(code::CANCELLED, "cancelled: the client closed its connection"));
        }
        Ok(())
    }
}
