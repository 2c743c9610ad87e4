//! `shoal`: run sandboxed WebAssembly jobs over content-addressed data.
//!
//! The binary composes the library crates: it parses the command line,
//! opens the block store chosen by `--home` / `--ipfs-api`, and prints
//! human or `--json` output. Errors are reported once, in `main`, as a
//! lowercase message; the exit status is 1 (or the verb's own status).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd_net;
mod cmd_node;
mod cmd_receipt;
mod cmd_run;
mod cmd_storage;
mod output;
mod store;

/// Run sandboxed WebAssembly jobs over content-addressed data.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub struct Cli {
    /// Shoal's home directory (embedded store, keys, configuration).
    #[arg(long, global = true, env = "SHOAL_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Use a Kubo daemon's HTTP RPC API as the block store instead of the
    /// embedded one, e.g. http://127.0.0.1:5001.
    #[arg(long, global = true, env = "SHOAL_IPFS_API", value_name = "URL")]
    ipfs_api: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// A node's HTTP API, for the verbs that talk to a node (and for
    /// `cat`/`get` of CIDs not in the local store).
    #[arg(long, global = true, env = "SHOAL_NODE", value_name = "URL")]
    node: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a WASI job locally over content-addressed inputs; print its result CID.
    Run(cmd_run::RunArgs),
    /// Show a job result (exit code, outputs) or any CID's kind and size.
    Inspect(cmd_run::InspectArgs),
    /// Import a file or directory, pin it, and print its root CID.
    Add(cmd_storage::AddArgs),
    /// Print a file's content.
    Cat(cmd_storage::CatArgs),
    /// Write a file or directory tree to disk.
    Get(cmd_storage::GetArgs),
    /// List a directory.
    Ls(cmd_storage::LsArgs),
    /// Manage pins.
    #[command(subcommand)]
    Pin(cmd_storage::PinCmd),
    /// Export or import CAR files.
    #[command(subcommand)]
    Car(cmd_storage::CarCmd),
    /// Verify, garbage-collect or measure the store.
    #[command(subcommand)]
    Repo(cmd_storage::RepoCmd),
    /// Run a peer node (requester and compute node).
    Node(cmd_node::NodeArgs),
    /// Start N nodes on loopback and keep them running until Ctrl-C.
    Devstack(cmd_net::DevstackArgs),
    /// Submit a job to a node; print its id (or, with --wait, its result CID).
    Submit(cmd_net::SubmitArgs),
    /// Describe, list, follow or cancel jobs on a node.
    #[command(subcommand)]
    Job(cmd_net::JobCmd),
    /// Follow, describe, list or cancel pipelines (`shoal submit -f` with
    /// a file of `steps`).
    #[command(subcommand)]
    Pipeline(cmd_net::PipelineCmd),
    /// The nodes a node knows, with their capacity and record.
    Nodes,
    /// Put a CID from the local store, or a local file or directory, on a
    /// node (--node), pinned there.
    Push(cmd_net::PushArgs),
    /// Print this client's submitter key (created in <home>/client.key on
    /// first use): what `shoal submit` signs with, and what an operator
    /// names in `shoal node --allow-submitter`.
    Whoami,
    /// Verify a completed job's signed receipt, offline.
    #[command(subcommand)]
    Receipt(cmd_receipt::ReceiptCmd),
}

/// Global settings every verb sees.
pub struct Ctx {
    pub home: PathBuf,
    pub ipfs_api: Option<String>,
    pub json: bool,
    /// The node the network verbs talk to.
    pub node: cmd_net::NodeUrl,
    /// Progress bars only when a person is watching.
    pub interactive: bool,
}

fn default_home() -> PathBuf {
    std::env::home_dir().unwrap_or_else(|| PathBuf::from(".")).join(".shoal")
}

/// The log filter when `SHOAL_LOG` is unset: warnings, but not kad's
/// "failed to trigger bootstrap: no known peers", which a node without
/// `--ipfs-peer` would print for each IPFS DHT every 5 minutes.
const DEFAULT_LOG: &str = "warn,libp2p_kad::behaviour=error";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| DEFAULT_LOG.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person's terminal, never into log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    // What shoal writes in its home (store, keys, job database, module
    // cache, scratch) is the user's alone: files 0600, directories 0700.
    // Only the verbs that write the user's own files elsewhere keep the
    // user's umask for those.
    let writes_user_files = matches!(cli.command, Command::Get(_) | Command::Car(cmd_storage::CarCmd::Export { .. }));
    if !writes_user_files {
        // SAFETY: umask(2) only sets this process's file mode mask; it is
        // called before any other thread exists.
        unsafe {
            libc::umask(0o077);
        }
    }
    let ctx = Ctx {
        home: cli.home.clone().unwrap_or_else(default_home),
        ipfs_api: cli.ipfs_api.clone(),
        json: cli.json,
        node: cmd_net::NodeUrl { node: cli.node.clone() },
        interactive: std::io::stderr().is_terminal(),
    };
    let res = match cli.command {
        Command::Run(a) => cmd_run::run(&ctx, a),
        Command::Inspect(a) => cmd_run::inspect(&ctx, a),
        Command::Add(a) => cmd_storage::add(&ctx, a),
        Command::Cat(a) => cmd_storage::cat(&ctx, a),
        Command::Get(a) => cmd_storage::get(&ctx, a),
        Command::Ls(a) => cmd_storage::ls(&ctx, a),
        Command::Pin(c) => cmd_storage::pin(&ctx, c),
        Command::Car(c) => cmd_storage::car(&ctx, c),
        Command::Repo(c) => cmd_storage::repo(&ctx, c),
        Command::Node(a) => cmd_node::run(&ctx, a),
        Command::Devstack(a) => cmd_net::devstack(&ctx, a),
        Command::Submit(a) => cmd_net::submit(&ctx, a),
        Command::Job(c) => cmd_net::job(&ctx, c),
        Command::Nodes => cmd_net::nodes(&ctx),
        Command::Pipeline(c) => cmd_net::pipeline(&ctx, c),
        Command::Push(a) => cmd_net::push(&ctx, a),
        Command::Receipt(c) => cmd_receipt::receipt(&ctx, c),
        Command::Whoami => cmd_net::whoami(&ctx),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            output::error(&ctx, &e);
            ExitCode::FAILURE
        }
    }
}
