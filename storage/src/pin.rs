//! Pinning with completeness checks.
//!
//! A recursive pin promises that the whole DAG stays; so it is only taken
//! once every block of the DAG is present and hash-checked.

use cid::Cid;

use crate::exporter::walk;
use crate::store::{BlockStore, PinMode};
use crate::{Error, Result};

/// Pins `cid`. A recursive pin first walks the DAG and fails with
/// [`Error::Incomplete`] naming the first missing block.
pub fn add(store: &dyn BlockStore, cid: &Cid, mode: PinMode) -> Result<()> {
    match mode {
        PinMode::Direct => {
            if !store.has(cid)? {
                return Err(Error::NotFound { cid: *cid });
            }
        }
        PinMode::Recursive => {
            walk(store, cid, &mut |_, _| Ok(())).map_err(|e| match e {
                Error::NotFound { cid: missing } if missing != *cid => Error::Incomplete { root: *cid, missing },
                e => e,
            })?;
        }
    }
    store.pin_add(cid, mode)
}
