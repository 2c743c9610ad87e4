//! Storage verbs: add, cat, get, ls, pin, car, repo.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_storage::block::parse_cid_path;
use shoal_storage::importer::{Importer, Options};
use shoal_storage::{car, exporter, pin as pins, repo as repos, BlockStore, Cid, CidVersion, NullStore, PinMode};

use crate::output;
use crate::store::Store;
use crate::Ctx;

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Print only the root CID.
    #[arg(short, long)]
    quiet: bool,
    /// Compute the CID without storing or pinning anything.
    #[arg(long)]
    only_hash: bool,
    /// CID version: 0 (Kubo's default, Qm…) or 1 (raw leaves, bafy…).
    #[arg(long, default_value = "0", value_parser = ["0", "1"])]
    cid_version: String,
    /// Leave out files and directories whose name starts with a dot, as
    /// `ipfs add -r` does without `--hidden` (default: include them).
    #[arg(long)]
    skip_hidden: bool,
    /// File or directory to import.
    path: PathBuf,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// CID or CID/path of a file.
    target: String,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// CID or CID/path of a file or directory.
    target: String,
    /// Where to write it (must not exist). Default: the last path segment or the CID.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// CID or CID/path of a directory.
    target: String,
}

#[derive(Debug, Subcommand)]
pub enum PinCmd {
    /// Pin CIDs (recursively unless --direct); the DAG must be complete.
    Add {
        /// Pin only the block itself.
        #[arg(long)]
        direct: bool,
        #[arg(required = true)]
        cids: Vec<String>,
    },
    /// List pins.
    Ls,
    /// Remove pins (blocks go at the next `repo gc`).
    Rm {
        #[arg(required = true)]
        cids: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CarCmd {
    /// Write the DAG under a CID to a CARv1 file.
    Export {
        /// Root CID (or CID/path).
        target: String,
        /// Output file (`-` for stdout).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Import a CARv1 file and pin its complete roots.
    Import {
        /// CAR file (`-` for stdin).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum RepoCmd {
    /// Hash-check every block and every pin's DAG.
    Verify,
    /// Remove blocks that no pin reaches.
    Gc,
    /// Count blocks, bytes and pins.
    Stat,
}

fn resolve(store: &dyn BlockStore, target: &str) -> anyhow::Result<Cid> {
    let (root, path) = parse_cid_path(target)?;
    Ok(exporter::resolve(store, &root, &path)?)
}

fn dir_size(path: &Path) -> u64 {
    walk_size(path, 0)
}

fn walk_size(path: &Path, depth: usize) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() || depth > 64 {
        return 0;
    }
    std::fs::read_dir(path).map(|rd| rd.flatten().map(|e| walk_size(&e.path(), depth + 1)).sum()).unwrap_or(0)
}

fn progress_bar(ctx: &Ctx, quiet: bool, path: &Path) -> Option<ProgressBar> {
    if !ctx.interactive || quiet || ctx.json {
        return None;
    }
    // Sizing the tree is a walk of its own: only worth it for a person.
    let total = dir_size(path);
    // Small imports finish before a bar would be readable.
    if total < (16 << 20) {
        return None;
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(pb)
}

pub fn add(ctx: &Ctx, a: AddArgs) -> anyhow::Result<ExitCode> {
    std::fs::symlink_metadata(&a.path).with_context(|| format!("cannot read {}; check the path", a.path.display()))?;
    let version = if a.cid_version == "1" { CidVersion::V1 } else { CidVersion::V0 };
    let opts = Options { hidden: !a.skip_hidden, ..Options::with_version(version) };
    let bar = progress_bar(ctx, a.quiet, &a.path);
    let tick = |n: u64| {
        if let Some(b) = &bar {
            b.inc(n);
        }
    };
    let added = if a.only_hash {
        Importer::new(&NullStore, opts).with_progress(&tick).add_path(&a.path)?
    } else {
        let store = Store::open(ctx)?;
        let _guard = store.write_guard()?;
        let s = store.get();
        let added = Importer::new(s, opts)
            .with_progress(&tick)
            .add_path(&a.path)
            .with_context(|| format!("import of {} failed; nothing was pinned", a.path.display()))?;
        // Durable blocks first, then the pin: a crash in between leaves
        // only unpinned blocks, which `repo gc` removes.
        s.flush()?;
        s.pin_add(&added.root, PinMode::Recursive)?;
        added
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if added.skipped_hidden > 0 && !a.quiet && !ctx.json {
        eprintln!("note: left out {} hidden entries (--skip-hidden)", added.skipped_hidden);
    }
    if ctx.json {
        output::json(&added)?;
    } else if a.quiet {
        println!("{}", added.root);
    } else {
        let name = a.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        println!("added {} {}", added.root, name);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cat(ctx: &Ctx, a: CatArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(ctx)?;
    crate::cmd_net::fetch_if_missing(ctx, store.get(), &a.target)?;
    let cid = resolve(store.get(), &a.target)?;
    let stdout = std::io::stdout();
    let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
    match exporter::cat(store.get(), &cid, &mut w) {
        Ok(_) => {}
        Err(shoal_storage::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(ExitCode::SUCCESS)
        }
        Err(e) => return Err(e.into()),
    }
    match w.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

pub fn get(ctx: &Ctx, a: GetArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(ctx)?;
    crate::cmd_net::fetch_if_missing(ctx, store.get(), &a.target)?;
    let cid = resolve(store.get(), &a.target)?;
    let out = a.output.unwrap_or_else(|| {
        let (root, path) = parse_cid_path(&a.target).unwrap_or((cid, vec![]));
        PathBuf::from(path.last().cloned().unwrap_or_else(|| root.to_string()))
    });
    let stats = exporter::get(store.get(), &cid, &out)?;
    if ctx.json {
        output::json(&serde_json::json!({ "cid": cid.to_string(), "output": out, "stats": stats }))?;
    } else {
        println!(
            "saved {} to {} ({} files, {} directories, {} symlinks, {} bytes)",
            cid,
            out.display(),
            stats.files,
            stats.dirs,
            stats.symlinks,
            stats.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn ls(ctx: &Ctx, a: LsArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(ctx)?;
    crate::cmd_net::fetch_if_missing(ctx, store.get(), &a.target)?;
    let cid = resolve(store.get(), &a.target)?;
    let entries = exporter::ls(store.get(), &cid)
        .with_context(|| format!("cannot list {}; `shoal cat` prints files", a.target))?;
    if ctx.json {
        output::json(&entries)?;
    } else {
        for e in entries {
            let size = e.tsize.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
            println!("{} {} {}", e.cid, size, e.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pin(ctx: &Ctx, c: PinCmd) -> anyhow::Result<ExitCode> {
    let store = Store::open(ctx)?;
    match c {
        PinCmd::Add { direct, cids } => {
            let _guard = store.write_guard()?;
            let mode = if direct { PinMode::Direct } else { PinMode::Recursive };
            let mut done = Vec::new();
            for t in cids {
                crate::cmd_net::fetch_if_missing(ctx, store.get(), &t)?;
                let cid = resolve(store.get(), &t)?;
                pins::add(store.get(), &cid, mode)?;
                done.push(cid.to_string());
            }
            if ctx.json {
                output::json(&serde_json::json!({ "pinned": done, "mode": mode }))?;
            } else {
                for c in done {
                    println!("pinned {c} {}", mode.as_str());
                }
            }
        }
        PinCmd::Ls => {
            let list = store.get().pin_ls()?;
            if ctx.json {
                let v: Vec<_> =
                    list.iter().map(|(c, m)| serde_json::json!({ "cid": c.to_string(), "mode": m })).collect();
                output::json(&v)?;
            } else {
                for (c, m) in list {
                    println!("{c} {}", m.as_str());
                }
            }
        }
        PinCmd::Rm { cids } => {
            let mut done = Vec::new();
            for t in cids {
                let (cid, path) = parse_cid_path(&t)?;
                if !path.is_empty() {
                    bail!("pins name whole dags: pass the root cid {cid}, not a path inside it");
                }
                store.get().pin_rm(&cid)?;
                done.push(cid.to_string());
            }
            if ctx.json {
                output::json(&serde_json::json!({ "unpinned": done }))?;
            } else {
                for c in done {
                    println!("unpinned {c}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn car(ctx: &Ctx, c: CarCmd) -> anyhow::Result<ExitCode> {
    let store = Store::open(ctx)?;
    let export = matches!(c, CarCmd::Export { .. });
    let to_stdout = matches!(&c, CarCmd::Export { output, .. } if output.as_os_str() == "-");
    let stats = match c {
        CarCmd::Export { target, output } => {
            crate::cmd_net::fetch_if_missing(ctx, store.get(), &target)?;
            let cid = resolve(store.get(), &target)?;
            if output.as_os_str() == "-" {
                let mut w = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
                let s = car::export(store.get(), &cid, &mut w)?;
                w.flush()?;
                s
            } else {
                let f = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&output)
                    .with_context(|| format!("cannot create {} (it must not exist yet)", output.display()))?;
                let mut w = BufWriter::with_capacity(1 << 20, f);
                let s = car::export(store.get(), &cid, &mut w)?;
                w.flush().with_context(|| format!("cannot write {}", output.display()))?;
                w.get_ref().sync_all().with_context(|| format!("cannot sync {}", output.display()))?;
                s
            }
        }
        CarCmd::Import { file } => {
            let _guard = store.write_guard()?;
            if file.as_os_str() == "-" {
                car::import(store.get(), std::io::stdin().lock(), "-")?
            } else {
                let f = File::open(&file).with_context(|| format!("cannot open {}; check the path", file.display()))?;
                car::import(store.get(), BufReader::new(f), &file.display().to_string())?
            }
        }
    };
    let incomplete: Vec<String> =
        stats.roots.iter().filter(|r| !export && !stats.pinned.contains(r)).map(|c| c.to_string()).collect();
    // A partial import fails, saying so (the blocks it had are stored,
    // unpinned: `repo gc` removes them).
    let partial = (!incomplete.is_empty()).then(|| {
        format!(
            "the car file holds {} of its {} roots whole; root {} is incomplete, so it was not pinned: import a \
             complete car (e.g. `shoal car export` of the whole dag)",
            stats.roots.len() - incomplete.len(),
            stats.roots.len(),
            incomplete[0]
        )
    });
    if export && to_stdout {
        // stdout is the car stream itself: report on stderr (as json too).
        if ctx.json {
            eprintln!("{}", serde_json::to_string(&stats)?);
        } else {
            eprintln!("exported {} blocks, {} bytes", stats.blocks, stats.bytes);
        }
    } else if ctx.json {
        // One document, the error in it when there is one.
        let mut v = serde_json::to_value(&stats)?;
        if let Some(o) = v.as_object_mut() {
            if !export {
                o.insert("incomplete".into(), serde_json::json!(incomplete));
            }
            if let Some(e) = &partial {
                o.insert("error".into(), serde_json::json!(e));
            }
        }
        output::json(&v)?;
        return Ok(if partial.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    } else if export {
        eprintln!("exported {} blocks, {} bytes", stats.blocks, stats.bytes);
    } else {
        for r in &stats.roots {
            println!("root {r}");
        }
        eprintln!("{} blocks, {} bytes", stats.blocks, stats.bytes);
    }
    match partial {
        Some(e) => Err(anyhow::anyhow!(e)),
        None => Ok(ExitCode::SUCCESS),
    }
}

pub fn repo(ctx: &Ctx, c: RepoCmd) -> anyhow::Result<ExitCode> {
    let store = Store::open(ctx)?;
    match c {
        RepoCmd::Verify => {
            let r = repos::verify(store.get())?;
            if ctx.json {
                output::json(&r)?;
            } else {
                for c in &r.corrupt {
                    println!("{c}");
                }
                // Each names its pin first (the path starts with it).
                for d in &r.damaged_pins {
                    println!("damaged pin: {d}");
                }
                println!("checked {} blocks: {}", r.checked, if r.ok() { "ok" } else { "problems found" });
                if !r.ok() {
                    eprintln!("hint: remove the damaged pins' data and re-add or re-fetch it; corrupt blocks are never served");
                }
            }
            Ok(if r.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        RepoCmd::Gc => {
            let _guard = store.gc_guard()?;
            let r = repos::gc(store.get())?;
            if ctx.json {
                output::json(&r)?;
            } else {
                println!(
                    "removed {} blocks ({} bytes), kept {}; {} bytes of disk space given back",
                    r.removed, r.bytes_freed, r.kept, r.reclaimed
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCmd::Stat => {
            let r = repos::stat(store.get())?;
            if ctx.json {
                output::json(&serde_json::json!({
                    "store": store.get().describe(),
                    "blocks": r.blocks,
                    "bytes": r.bytes,
                    "pins": r.pins,
                    "disk": r.disk,
                }))?;
            } else {
                println!(
                    "store: {}\nblocks: {}\nbytes: {}\npins: {}",
                    store.get().describe(),
                    r.blocks,
                    r.bytes,
                    r.pins
                );
                if let Some(d) = &r.disk {
                    println!("packs: {} ({} bytes on disk)", d.files, d.bytes);
                    println!(
                        "unused: {} bytes, {} packs without blocks (deleted blocks, imports killed or still running; `shoal repo gc` gives them back)",
                        d.unreferenced, d.files_without_blocks
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
