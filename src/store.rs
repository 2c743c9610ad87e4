//! Opening the block store the command line asks for.

use std::sync::Arc;

use anyhow::Context as _;
use shoal_storage::{BlockStore, FsStore};

use crate::Ctx;

/// The store a command works on, with the embedded store's locks at hand.
pub struct Store {
    pub dyn_store: Arc<dyn BlockStore>,
    fs: Option<Arc<FsStore>>,
}

/// A held lock (or nothing, for stores that manage their own).
pub struct Guard(#[allow(dead_code)] Option<shoal_storage::store::WriteGuard>);

impl Store {
    /// Opens the Kubo store if `--ipfs-api` is set, else the embedded one.
    pub fn open(ctx: &Ctx) -> anyhow::Result<Store> {
        if let Some(url) = &ctx.ipfs_api {
            #[cfg(feature = "kubo")]
            {
                let s = shoal_storage::KuboStore::connect(url)?;
                return Ok(Store { dyn_store: Arc::new(s), fs: None });
            }
            #[cfg(not(feature = "kubo"))]
            anyhow::bail!("this shoal was built without the `kubo` feature, so --ipfs-api {url} cannot be used; rebuild with default features");
        }
        let fs =
            Arc::new(FsStore::open(&ctx.home).with_context(|| {
                format!("cannot open the store in {} (set --home or SHOAL_HOME)", ctx.home.display())
            })?);
        // A home an older shoal left readable to others, made private.
        for t in fs.tightened() {
            match &t.new_mode {
                Ok(new) => eprintln!(
                    "note: made {} private (mode {:o} -> {new:o}): it holds your data and keys",
                    t.path.display(),
                    t.old_mode
                ),
                Err(e) => eprintln!("warning: {e}"),
            }
        }
        Ok(Store { dyn_store: fs.clone(), fs: Some(fs) })
    }

    /// The store as the trait object every library function takes.
    pub fn get(&self) -> &dyn BlockStore {
        &*self.dyn_store
    }

    /// Keeps `repo gc` out while importing and pinning.
    pub fn write_guard(&self) -> anyhow::Result<Guard> {
        Ok(Guard(self.fs.as_ref().map(|f| f.write_guard()).transpose()?))
    }

    /// Waits for writers, then keeps them out during `repo gc`.
    pub fn gc_guard(&self) -> anyhow::Result<Guard> {
        Ok(Guard(self.fs.as_ref().map(|f| f.gc_guard()).transpose()?))
    }
}
