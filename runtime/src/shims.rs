//! WASI preview1 calls we replace with our own versions.
//!
//! - `fd_readdir`: wasmtime-wasi lists directories in the host file
//!   system's order, which differs between file systems and machines. Ours
//!   asks wasmtime-wasi for the full listing into a bounded host buffer,
//!   sorts it by name (`.` and `..` first) and serves the guest's cookies
//!   from the sorted list.
//! - `path_link`: a hard link from a read-only input into `/outputs` would
//!   give the guest a writable name for an input file (and, through it, for
//!   the host's copy). Hard links are refused with `ENOTSUP`.
//! - `poll_oneoff`: a guest sleeping in a host call cannot be interrupted
//!   by epochs, so `sleep(3600)` would hold the job far past its timeout.
//!   Ours computes how long the call could block (only when every
//!   subscription is a clock: descriptors in this sandbox are always
//!   ready) and ends the job as timed out right away if that is beyond the
//!   job's deadline; otherwise it delegates.

use std::time::Duration;

use wasmtime::{Caller, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;
use wasmtime_wasi::p1::{types, WasiP1Ctx};
use wiggle::{GuestMemory, GuestPtr};

/// Largest directory listing (dirent headers plus names) buffered on the
/// host for one `fd_readdir` call: 16 MiB, roughly 300 000 entries with
/// 30-byte names. Larger directories get `ENOMEM`.
pub(crate) const MAX_LISTING_BYTES: usize = 16 << 20;

/// First attempt's buffer; most directories fit.
const INITIAL_LISTING_BYTES: usize = 64 << 10;

/// Size of a preview1 `dirent` header.
const DIRENT_SIZE: usize = 24;

const MODULE: &str = "wasi_snapshot_preview1";

/// Size of a preview1 `subscription`.
const SUBSCRIPTION_SIZE: usize = 48;

/// What the shims need from the store's data.
pub(crate) trait ShimHost: Send + 'static {
    /// The WASI context.
    fn wasi(&mut self) -> &mut WasiP1Ctx;
    /// Real time left before the job's timeout.
    fn time_left(&self) -> Duration;
    /// The job's cancellation token, if it has one.
    fn cancel(&self) -> Option<crate::Cancel>;
    /// Records that the job stopped because it was cancelled.
    fn cancelled(&mut self);
    /// Records that the job is being stopped for its timeout.
    fn timed_out(&mut self);
    /// The directory listing being paged through.
    fn listing_cache(&mut self) -> &mut ListingCache;
}

/// The sorted listing of the directory the guest is reading, so that paging
/// through a big directory (one call per buffer-full, resumed by cookie)
/// lists and stats it once rather than once per call. Holds at most one
/// listing, itself bounded by [`MAX_LISTING_BYTES`].
#[derive(Debug, Default)]
pub(crate) struct ListingCache {
    fd: Option<u32>,
    entries: Vec<Entry>,
}

/// How often a sleeping guest looks at its cancellation token.
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// Resolves once `cancel` is cancelled; never without one.
async fn until_cancelled(cancel: Option<crate::Cancel>) {
    let Some(cancel) = cancel else { return std::future::pending().await };
    while !cancel.is_cancelled() {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

/// Size of a WASI preview 1 `event`.
const EVENT_SIZE: usize = 32;

/// `(userdata, duration)` when the subscriptions are exactly one relative
/// clock timer.
fn single_relative_sleep(mem: &[u8], subs: u32, nsubs: u32) -> Option<(u64, Duration)> {
    if nsubs != 1 {
        return None;
    }
    let start = subs as usize;
    let sub = mem.get(start..start.checked_add(SUBSCRIPTION_SIZE)?)?;
    let flags = u16::from_le_bytes(sub[40..42].try_into().ok()?);
    if sub[8] != 0 || flags & 1 == 1 {
        return None;
    }
    let userdata = u64::from_le_bytes(sub[0..8].try_into().ok()?);
    let timeout = u64::from_le_bytes(sub[24..32].try_into().ok()?);
    Some((userdata, Duration::from_nanos(timeout)))
}

/// Sleeps `wait` in steps of [`CANCEL_POLL`]; false if `cancel` fired.
fn sleep_unless_cancelled(wait: Duration, cancel: &crate::Cancel) -> bool {
    let end = std::time::Instant::now() + wait;
    loop {
        if cancel.is_cancelled() {
            return false;
        }
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(CANCEL_POLL));
    }
}

/// Installs the shims over the ones `add_to_linker_sync` defined.
pub(crate) fn add_to_linker<T: ShimHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(
        MODULE,
        "poll_oneoff",
        |mut caller: Caller<'_, T>, subs: i32, events: i32, nsubs: i32, nevents: i32| -> wasmtime::Result<i32> {
            let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
                return Ok(types::Errno::Fault as i32);
            };
            let (mem, host) = memory.data_and_store_mut(&mut caller);
            if let Some(wait) = longest_block(host.wasi(), mem, subs as u32, nsubs as u32) {
                if wait > host.time_left() {
                    host.timed_out();
                    return Err(wasmtime::format_err!("job would sleep past its timeout"));
                }
            }
            let (subs, events, nsubs) = (subs as u32, events as u32, nsubs as u32);
            let nevents = nevents as u32 as usize;
            let cancel = host.cancel();
            // One relative timer is a plain sleep, which wasmtime-wasi does
            // with a blocking thread sleep nothing can wake: with a token,
            // sleep here in steps that look at it.
            if let Some(c) = &cancel {
                if let Some((userdata, wait)) = single_relative_sleep(mem, subs, nsubs) {
                    if !sleep_unless_cancelled(wait, c) {
                        host.cancelled();
                        return Err(wasmtime::format_err!("job cancelled while sleeping"));
                    }
                    let Some(event) =
                        (events as usize).checked_add(EVENT_SIZE).and_then(|end| mem.get_mut(events as usize..end))
                    else {
                        return Ok(types::Errno::Fault as i32);
                    };
                    // userdata, errno 0, type clock (0), no fd_readwrite.
                    event.fill(0);
                    event[..8].copy_from_slice(&userdata.to_le_bytes());
                    match nevents.checked_add(4).and_then(|end| mem.get_mut(nevents..end)) {
                        Some(dst) => dst.copy_from_slice(&1u32.to_le_bytes()),
                        None => return Ok(types::Errno::Fault as i32),
                    }
                    return Ok(types::Errno::Success as i32);
                }
            }
            let polled = {
                let mut gm = GuestMemory::Unshared(&mut *mem);
                let fut = host.wasi().poll_oneoff(&mut gm, GuestPtr::new(subs), GuestPtr::new(events), nsubs);
                // A cancelled job must not sleep on: wake it to stop.
                wasmtime_wasi::runtime::in_tokio(async {
                    tokio::select! {
                        r = fut => Some(r),
                        _ = until_cancelled(cancel) => None,
                    }
                })
            };
            let n = match polled {
                Some(Ok(n)) => n,
                Some(Err(e)) => return e.downcast().map(|errno| errno as i32),
                None => {
                    host.cancelled();
                    return Err(wasmtime::format_err!("job cancelled while sleeping"));
                }
            };
            match nevents.checked_add(4).and_then(|end| mem.get_mut(nevents..end)) {
                Some(dst) => dst.copy_from_slice(&n.to_le_bytes()),
                None => return Ok(types::Errno::Fault as i32),
            }
            Ok(types::Errno::Success as i32)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_readdir",
        |mut caller: Caller<'_, T>,
         fd: i32,
         buf: i32,
         buf_len: i32,
         cookie: i64,
         bufused: i32|
         -> wasmtime::Result<i32> {
            let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
                return Ok(types::Errno::Fault as i32);
            };
            let (mem, host) = memory.data_and_store_mut(&mut caller);
            let fd = fd as u32;
            // Cookie 0 starts a new listing; later cookies page through the
            // one cached for this descriptor.
            if cookie == 0 || host.listing_cache().fd != Some(fd) {
                let listing = sorted_listing(host.wasi(), fd);
                let cache = host.listing_cache();
                match listing {
                    Ok(entries) => {
                        cache.fd = Some(fd);
                        cache.entries = entries;
                    }
                    Err(errno) => {
                        *cache = ListingCache::default();
                        return Ok(errno as i32);
                    }
                }
            }
            let (buf, buf_len, bufused) = (buf as u32 as usize, buf_len as u32 as usize, bufused as u32 as usize);
            let (Some(buf_end), Some(used_end)) = (buf.checked_add(buf_len), bufused.checked_add(4)) else {
                return Ok(types::Errno::Fault as i32);
            };
            if buf_end > mem.len() || used_end > mem.len() {
                return Ok(types::Errno::Fault as i32);
            }
            let written = serialize(&host.listing_cache().entries, cookie as u64, &mut mem[buf..buf_end]);
            mem[bufused..used_end].copy_from_slice(&(written as u32).to_le_bytes());
            Ok(types::Errno::Success as i32)
        },
    )?;
    linker.func_wrap(MODULE, "path_link", |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> i32 {
        types::Errno::Notsup as i32
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// How long a `poll_oneoff` with these subscriptions can block: the
/// shortest clock timeout when every subscription is a clock, `None` when
/// it cannot block (a descriptor subscription, which is always ready here)
/// or the subscriptions are unreadable (the real call reports that).
fn longest_block(ctx: &mut WasiP1Ctx, mem: &[u8], subs: u32, nsubs: u32) -> Option<Duration> {
    let start = subs as usize;
    let len = (nsubs as usize).checked_mul(SUBSCRIPTION_SIZE)?;
    let bytes = mem.get(start..start.checked_add(len)?)?;
    let mut shortest: Option<u64> = None;
    for sub in bytes.chunks_exact(SUBSCRIPTION_SIZE) {
        if sub[8] != 0 {
            return None;
        }
        let id = u32::from_le_bytes(sub[16..20].try_into().ok()?);
        let timeout = u64::from_le_bytes(sub[24..32].try_into().ok()?);
        let flags = u16::from_le_bytes(sub[40..42].try_into().ok()?);
        let relative = if flags & 1 == 1 {
            // Absolute: measure against the same clock the guest sees.
            let clock = types::Clockid::try_from(id).ok()?;
            let mut empty = [0u8; 0];
            let now = ctx.clock_time_get(&mut GuestMemory::Unshared(&mut empty), clock, 0).ok()?;
            timeout.saturating_sub(now)
        } else {
            timeout
        };
        shortest = Some(shortest.map_or(relative, |s| s.min(relative)));
    }
    shortest.map(Duration::from_nanos)
}

/// One directory entry as the guest sees it, minus the cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    ino: u64,
    kind: u8,
    name: Vec<u8>,
}

/// The complete listing of `fd`, sorted, or the errno to return.
fn sorted_listing(ctx: &mut WasiP1Ctx, fd: u32) -> Result<Vec<Entry>, types::Errno> {
    let mut cap = INITIAL_LISTING_BYTES;
    loop {
        let mut host = vec![0u8; cap];
        let len = u32::try_from(cap).map_err(|_| types::Errno::Nomem)?;
        let used = {
            let mut mem = GuestMemory::Unshared(&mut host);
            let fut = ctx.fd_readdir(&mut mem, types::Fd::from(fd), GuestPtr::new(0), len, 0);
            match wasmtime_wasi::runtime::in_tokio(fut) {
                Ok(n) => n as usize,
                // A trap-worthy error from wasmtime-wasi is reported as a
                // plain I/O error: the guest made no invalid request here.
                Err(e) => return Err(e.downcast().unwrap_or(types::Errno::Io)),
            }
        };
        if used < cap {
            let mut entries = parse(&host[..used]);
            // `.` and `..` come first from wasmtime-wasi; sort the rest by
            // raw name bytes, which is locale- and file-system-independent.
            let split = entries.iter().take(2).take_while(|e| e.name == b"." || e.name == b"..").count();
            entries[split..].sort_by(|a, b| a.name.cmp(&b.name));
            return Ok(entries);
        }
        if cap >= MAX_LISTING_BYTES {
            return Err(types::Errno::Nomem);
        }
        cap = (cap * 4).min(MAX_LISTING_BYTES);
    }
}

fn parse(mut buf: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    while buf.len() >= DIRENT_SIZE {
        let ino = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
        let namlen = u32::from_le_bytes(buf[16..20].try_into().unwrap_or_default()) as usize;
        let kind = buf[20];
        let Some(name) = buf.get(DIRENT_SIZE..DIRENT_SIZE + namlen) else {
            break;
        };
        out.push(Entry { ino, kind, name: name.to_vec() });
        buf = &buf[DIRENT_SIZE + namlen..];
    }
    out
}

/// Writes entries from `cookie` on, truncating the last one if it does not
/// fit, exactly as preview1 specifies (the guest detects a full buffer and
/// calls again with the last complete entry's cookie). Returns bytes used.
fn serialize(entries: &[Entry], cookie: u64, out: &mut [u8]) -> usize {
    let mut pos = 0;
    let skip = usize::try_from(cookie).unwrap_or(usize::MAX);
    for (i, e) in entries.iter().enumerate().skip(skip) {
        let mut header = [0u8; DIRENT_SIZE];
        header[0..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        header[8..16].copy_from_slice(&e.ino.to_le_bytes());
        header[16..20].copy_from_slice(&(e.name.len() as u32).to_le_bytes());
        header[20] = e.kind;
        for part in [&header[..], &e.name[..]] {
            let n = part.len().min(out.len() - pos);
            out[pos..pos + n].copy_from_slice(&part[..n]);
            pos += n;
            if pos == out.len() {
                return pos;
            }
        }
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry { ino: 7, kind: 4, name: name.as_bytes().to_vec() }
    }

    #[test]
    fn round_trip_and_cookies() {
        let entries = vec![entry("."), entry(".."), entry("a"), entry("bb")];
        let mut buf = vec![0u8; 1024];
        let n = serialize(&entries, 0, &mut buf);
        assert_eq!(n, 4 * DIRENT_SIZE + 1 + 2 + 1 + 2);
        assert_eq!(parse(&buf[..n]), entries);
        let n = serialize(&entries, 3, &mut buf);
        assert_eq!(parse(&buf[..n]), vec![entry("bb")]);
        assert_eq!(u64::from_le_bytes(buf[0..8].try_into().unwrap()), 4);
    }

    #[test]
    fn truncates_to_buffer() {
        let entries = vec![entry("abc")];
        let mut buf = vec![0u8; 10];
        assert_eq!(serialize(&entries, 0, &mut buf), 10);
    }
}
