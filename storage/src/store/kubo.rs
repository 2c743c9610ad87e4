//! A block store backed by a Kubo node's HTTP RPC API.
//!
//! Only block and pin calls cross the wire (`block/put|get|stat|rm`,
//! `pin/add|ls|rm`, `refs/local`): importing and exporting stay on Shoal's
//! side, so CIDs are computed by the same code whichever store is used.
//! Every block read back is hash-checked here, because the daemon is just
//! another peer. Each call has a deadline ([`DEFAULT_TIMEOUT`]) because a
//! daemon asked for a block it lacks may search the network for a long time.
//!
//! ipfs-api-backend-hyper is async; this store runs it on a small private
//! tokio runtime and waits for each call, so it works from any thread,
//! inside or outside another runtime.

use std::future::Future;
use std::io::Cursor;
use std::time::Duration;

use cid::Cid;
use futures::TryStreamExt;
use ipfs_api_backend_hyper::{request, BackendWithGlobalOptions, GlobalOptions, IpfsApi, IpfsClient, TryFromUri};
use ipfs_api_prelude::Backend;

use super::{BlockStore, PinMode};
use crate::block::DAG_PB;
use crate::{Block, Error, Result};

/// Deadline for one RPC call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline the daemon is given to find a block locally (`has`, `get`).
/// Kubo answers at once with `offline=true`; js-ipfs ignores `offline` and
/// searches until this `timeout` expires, which then means "not here".
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Blocks and pins in a Kubo (or compatible) daemon.
pub struct KuboStore {
    url: String,
    client: IpfsClient,
    rt: tokio::runtime::Runtime,
    timeout: Duration,
}

impl std::fmt::Debug for KuboStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KuboStore").field("url", &self.url).finish()
    }
}

enum CallError {
    Timeout,
    Api(ipfs_api_backend_hyper::Error),
}

impl KuboStore {
    /// Connects to the RPC API at `url` (e.g. `http://127.0.0.1:5001`) and
    /// checks that it answers.
    pub fn connect(url: &str) -> Result<KuboStore> {
        KuboStore::connect_with_timeout(url, DEFAULT_TIMEOUT)
    }

    /// As [`KuboStore::connect`], with a per-call deadline.
    pub fn connect_with_timeout(url: &str, timeout: Duration) -> Result<KuboStore> {
        let client = IpfsClient::from_str(url).map_err(|e| Error::Kubo {
            url: url.to_string(),
            message: format!("not a valid url ({e}); expected e.g. http://127.0.0.1:5001"),
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the ipfs api client runtime", url, e))?;
        let store = KuboStore { url: url.to_string(), client, rt, timeout };
        let c = store.client.clone();
        store.call("version", move || async move { c.version().await })?;
        Ok(store)
    }

    /// The API address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs the future `make` builds on the private runtime. The client's
    /// futures are not `Send`, so each call is driven from a short-lived
    /// thread of its own: that also keeps it legal from inside another
    /// tokio runtime.
    fn run<T, M, F>(&self, make: M) -> std::result::Result<T, CallError>
    where
        T: Send,
        M: FnOnce() -> F + Send,
        F: Future<Output = std::result::Result<T, ipfs_api_backend_hyper::Error>>,
    {
        let timeout = self.timeout;
        let rt = &self.rt;
        let res = std::thread::scope(|s| {
            s.spawn(move || rt.block_on(async move { tokio::time::timeout(timeout, make()).await })).join()
        });
        match res {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(CallError::Api(e)),
            Ok(Err(_)) | Err(_) => Err(CallError::Timeout),
        }
    }

    fn call<T, M, F>(&self, what: &str, make: M) -> Result<T>
    where
        T: Send,
        M: FnOnce() -> F + Send,
        F: Future<Output = std::result::Result<T, ipfs_api_backend_hyper::Error>>,
    {
        self.run(make).map_err(|e| self.error(what, e))
    }

    /// A client whose calls only look in the daemon's own blockstore.
    fn local(&self) -> BackendWithGlobalOptions<IpfsClient> {
        BackendWithGlobalOptions::new(
            self.client.clone(),
            GlobalOptions { offline: Some(true), timeout: Some(LOOKUP_TIMEOUT) },
        )
    }

    fn error(&self, what: &str, e: CallError) -> Error {
        let message = match e {
            CallError::Timeout => format!("{what} got no answer within {:?}; is the daemon overloaded or searching the network?", self.timeout),
            CallError::Api(ipfs_api_backend_hyper::Error::Client(e)) => format!(
                "{what} failed: cannot reach the daemon ({}); start it (`ipfs daemon`) or fix --ipfs-api / SHOAL_IPFS_API",
                e.to_string().to_lowercase()
            ),
            CallError::Api(e) => format!("{what} failed: {}", e.to_string().to_lowercase()),
        };
        Error::Kubo { url: self.url.clone(), message }
    }
}

fn is_not_found(e: &CallError) -> bool {
    match e {
        CallError::Api(ipfs_api_backend_hyper::Error::Api(a)) => {
            let m = a.message.to_lowercase();
            m.contains("not found")
                || m.contains("notfound")
                || m.contains("could not find")
                // js-ipfs's answer once LOOKUP_TIMEOUT expires.
                || m.contains("request timed out")
        }
        _ => false,
    }
}

fn api_message(e: &CallError) -> String {
    match e {
        CallError::Api(ipfs_api_backend_hyper::Error::Api(a)) => a.message.to_lowercase(),
        _ => String::new(),
    }
}

impl BlockStore for KuboStore {
    fn put(&self, block: &Block) -> Result<()> {
        let c = self.client.clone();
        let data = block.data().to_vec();
        let format = if block.cid().codec() == DAG_PB { "dag-pb" } else { "raw" };
        let resp = self.call("block/put", move || async move {
            let opts = request::BlockPut { format: Some(format), mhtype: Some("sha2-256"), mhlen: None, pin: None };
            c.block_put_with_options(Cursor::new(data), opts).await
        })?;
        let stored = Cid::try_from(resp.key.as_str()).map_err(|e| Error::Kubo {
            url: self.url.clone(),
            message: format!("block/put answered an invalid cid {:?}: {e}", resp.key),
        })?;
        if stored.hash() != block.cid().hash() {
            return Err(Error::Kubo {
                url: self.url.clone(),
                message: format!("block/put stored {stored} for {}: the daemon hashed differently", block.cid()),
            });
        }
        Ok(())
    }

    fn get(&self, cid: &Cid) -> Result<Block> {
        // One call: a missing block comes back as "not found" (Kubo,
        // offline) or as the lookup deadline expiring (js-ipfs).
        let c = self.local();
        let key = cid.to_string();
        let data: Vec<u8> = self
            .run(move || async move {
                c.block_get(&key)
                    .try_fold(Vec::new(), |mut acc, chunk| async move {
                        acc.extend_from_slice(&chunk);
                        Ok(acc)
                    })
                    .await
            })
            .map_err(|e| if is_not_found(&e) { Error::NotFound { cid: *cid } } else { self.error("block/get", e) })?;
        Block::verified(*cid, data)
    }

    fn has(&self, cid: &Cid) -> Result<bool> {
        Ok(self.size(cid)?.is_some())
    }

    fn size(&self, cid: &Cid) -> Result<Option<u64>> {
        // Ask offline: a daemon must not go looking for a block on the
        // network just because we asked whether it has it.
        let c = self.local();
        let key = cid.to_string();
        match self.run(move || async move { c.block_stat(&key).await }) {
            Ok(r) => Ok(Some(r.size)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.error("block/stat", e)),
        }
    }

    fn delete(&self, cid: &Cid) -> Result<()> {
        let c = self.client.clone();
        let key = cid.to_string();
        match self.run(move || async move { c.block_rm(&key).await }) {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.error("block/rm", e)),
        }
    }

    fn list(&self) -> Result<Vec<Cid>> {
        // Parsed by hand: js-ipfs leaves out the `Err` field that
        // ipfs-api's own response type requires.
        #[derive(serde::Deserialize)]
        struct Ref {
            #[serde(rename = "Ref")]
            reference: String,
            #[serde(rename = "Err", default)]
            err: Option<String>,
        }
        let c = self.client.clone();
        let (status, body) =
            self.call("refs/local", move || async move { Backend::request_raw(&c, request::RefsLocal, None).await })?;
        if !status.is_success() {
            return Err(Error::Kubo {
                url: self.url.clone(),
                message: format!("refs/local failed with http status {status}"),
            });
        }
        let mut out = Vec::new();
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let r: Ref = serde_json::from_slice(line).map_err(|e| Error::Kubo {
                url: self.url.clone(),
                message: format!("refs/local answered something unexpected: {e}"),
            })?;
            if let Some(err) = r.err.filter(|e| !e.is_empty()) {
                return Err(Error::Kubo { url: self.url.clone(), message: format!("refs/local failed: {err}") });
            }
            let cid = Cid::try_from(r.reference.as_str()).map_err(|e| Error::Kubo {
                url: self.url.clone(),
                message: format!("refs/local listed an invalid cid {:?}: {e}", r.reference),
            })?;
            out.push(super::raw_cid(&cid));
        }
        Ok(out)
    }

    fn flush(&self) -> Result<()> {
        // The daemon's own blockstore decides durability.
        Ok(())
    }

    fn pin_add(&self, cid: &Cid, mode: PinMode) -> Result<()> {
        let c = self.client.clone();
        let key = cid.to_string();
        let recursive = mode == PinMode::Recursive;
        match self.run(move || async move { c.pin_add(&key, recursive).await }) {
            Ok(_) => Ok(()),
            // js-ipfs answers an error where Kubo succeeds; the pin exists.
            Err(e) if api_message(&e).contains("already pinned") => Ok(()),
            Err(e) => Err(self.error("pin/add", e)),
        }
    }

    fn pin_rm(&self, cid: &Cid) -> Result<()> {
        let mode = self.pin_ls()?.into_iter().find(|(c, _)| c.hash() == cid.hash()).map(|(_, m)| m);
        let Some(mode) = mode else {
            return Err(Error::NotPinned { cid: *cid });
        };
        let c = self.client.clone();
        let key = cid.to_string();
        self.call("pin/rm", move || async move { c.pin_rm(&key, mode == PinMode::Recursive).await })?;
        Ok(())
    }

    fn pin_ls(&self) -> Result<Vec<(Cid, PinMode)>> {
        let c = self.client.clone();
        let resp = self.call("pin/ls", move || async move { c.pin_ls(None, None).await })?;
        let mut out = Vec::new();
        for (key, ty) in resp.keys {
            let mode = match ty.typ.as_str() {
                "recursive" => PinMode::Recursive,
                "direct" => PinMode::Direct,
                _ => continue,
            };
            let cid = Cid::try_from(key.as_str()).map_err(|e| Error::Kubo {
                url: self.url.clone(),
                message: format!("pin/ls listed an invalid cid {key:?}: {e}"),
            })?;
            out.push((cid, mode));
        }
        out.sort_by_key(|(c, _)| c.to_bytes());
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("ipfs daemon at {}", self.url)
    }
}
