//! `shoal node`: flags parsed into [`shoal_node::Config`], the home's
//! store, key and token opened, and the node run until SIGINT/SIGTERM.

use std::net::SocketAddr;

use anyhow::Context as _;
use libp2p::Multiaddr;

use crate::Ctx;

/// Run a peer node: requester and (unless --no-compute) compute node.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// libp2p listen address; port 0 lets the OS choose.
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0", value_name = "MULTIADDR")]
    pub listen: Multiaddr,
    /// A peer to connect to at start (ending in /p2p/<peer id>). Repeatable.
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub peers: Vec<Multiaddr>,
    /// An IPFS peer (a Kubo node, ending in /p2p/<peer id>) to connect to
    /// at start; blocks that no Shoal peer has are asked of it over
    /// Bitswap, and it bootstraps the node's IPFS DHT. Repeatable. No
    /// public IPFS peer is dialed by default (see docs/ipfs.md to join the
    /// public network).
    #[arg(long = "ipfs-peer", value_name = "MULTIADDR")]
    pub ipfs_peers: Vec<Multiaddr>,
    /// Which blocks IPFS peers may get from this node over Bitswap and
    /// the gateway: `pinned` (only pinned data: results, uploads, pins),
    /// `all` (every block held, caches included), `off`.
    #[arg(long, default_value = "pinned", value_name = "POLICY")]
    pub ipfs_serve: shoal_node::serve::Policy,
    /// How long a fetch waits for the IPFS DHT to find and connect a
    /// provider of a block that no connected peer has (e.g. 20s; 0s skips
    /// the DHT).
    #[arg(long, default_value = "20s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ipfs_dht_timeout: std::time::Duration,
    /// A trustless IPFS gateway (http(s)://host[:port]) asked, last, for
    /// blocks that neither Shoal nor IPFS peers have; every block is
    /// verified against its CID. Repeatable.
    #[arg(long = "gateway", value_name = "URL", value_parser = parse_gateway)]
    pub gateways: Vec<String>,
    /// Address of the HTTP API. A non-loopback address requires the bearer
    /// token in <home>/api-token on every request.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub api: SocketAddr,
    /// Require the api token on a loopback bind too (other users of this
    /// machine, and its browsers, can reach loopback).
    #[arg(long)]
    pub require_token: bool,
    /// A host name the api answers to besides its ip addresses and
    /// `localhost` (requests naming any other host are refused, against
    /// dns rebinding). Repeatable.
    #[arg(long = "api-host", value_name = "NAME")]
    pub api_hosts: Vec<String>,
    /// A label other nodes can select on (constraints). Repeatable.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Executions this node runs at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub slots: u32,
    /// Only schedule jobs; run none.
    #[arg(long)]
    pub no_compute: bool,
    /// GPU use: `auto` advertises a GPU if one is found, `off` never.
    #[arg(long, value_enum, default_value_t = GpuUse::Auto)]
    pub gpu: GpuUse,
    /// Count a software Vulkan device (lavapipe) as this node's GPU:
    /// correct but slow; off by default.
    #[arg(long)]
    pub allow_software_gpu: bool,
    /// Run executions only for this requester (its peer id). Repeatable, at
    /// most 64; by default the node works for any requester.
    #[arg(long = "allow-requester", value_name = "PEER")]
    pub allow_requesters: Vec<libp2p::PeerId>,
    /// Run only jobs this submitter signed (its key, as `shoal whoami`
    /// prints it). Repeatable, at most 64; by default the node runs
    /// anyone's jobs, anonymous ones included.
    #[arg(long = "allow-submitter", value_name = "KEY")]
    pub allow_submitters: Vec<libp2p::PeerId>,
    /// As a requester: the most unfinished jobs one submitter may hold
    /// here (anonymous submissions count as one submitter); more are
    /// refused with 429. Default: no limit.
    #[arg(long, value_name = "N")]
    pub quota_jobs: Option<u32>,
    /// As a requester: the most executions one submitter's jobs may have
    /// asking for or holding a slot at once; its other jobs wait. Default:
    /// no limit.
    #[arg(long, value_name = "N")]
    pub quota_executions: Option<u32>,
    /// Discover peers on the local network with mDNS (off by default).
    #[arg(long)]
    pub mdns: bool,
    /// Misbehave, for tests: wrong-result, crash, or silent.
    #[cfg(debug_assertions)]
    #[arg(long, hide = true, value_name = "MODE")]
    pub misbehave: Option<shoal_node::compute::Misbehave>,
}

/// Whether a node uses a GPU (`--gpu`): a typo is refused, not taken for
/// `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuUse {
    /// Advertise and use a GPU if one is found.
    Auto,
    /// Never use one.
    Off,
}

fn parse_gateway(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['?', '#']) => Ok(s.trim_end_matches('/').to_owned()),
        _ => Err(format!("expected an http:// or https:// gateway address without query, got {s:?}")),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

impl NodeArgs {
    /// The library's configuration; the token is read from the home when
    /// the API needs one.
    fn config(&self, home: &std::path::Path) -> anyhow::Result<shoal_node::Config> {
        let needs_token = !self.api.ip().is_loopback() || self.require_token;
        Ok(shoal_node::Config {
            listen: self.listen.clone(),
            peers: self.peers.clone(),
            ipfs_peers: self.ipfs_peers.clone(),
            ipfs_serve: self.ipfs_serve,
            ipfs_dht_timeout: self.ipfs_dht_timeout,
            gateways: self.gateways.clone(),
            labels: self.labels.iter().cloned().collect(),
            compute: !self.no_compute,
            slots: self.slots,
            gpu: self.gpu == GpuUse::Auto,
            allow_software_gpu: self.allow_software_gpu,
            allow_requesters: self.allow_requesters.clone(),
            allow_submitters: self.allow_submitters.clone(),
            quotas: shoal_node::Quotas { jobs: self.quota_jobs, executions: self.quota_executions },
            api_token: if needs_token { Some(shoal_node::load_token(home)?) } else { None },
            api_hosts: self.api_hosts.clone(),
            network: shoal_scheduler::net::Config { mdns: self.mdns, ..Default::default() },
            #[cfg(debug_assertions)]
            misbehave: self.misbehave,
            ..Default::default()
        })
    }
}

/// Runs `shoal node` until SIGINT/SIGTERM.
pub fn run(ctx: &Ctx, args: NodeArgs) -> anyhow::Result<std::process::ExitCode> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        std::fs::create_dir_all(&ctx.home)
            .with_context(|| format!("cannot create the node home {}", ctx.home.display()))?;
        let store = crate::store::Store::open(ctx)?.dyn_store;
        let config = args.config(&ctx.home)?;
        let listener = tokio::net::TcpListener::bind(args.api)
            .await
            .with_context(|| format!("cannot bind the api on {}; is the port in use?", args.api))?;
        let deps = shoal_node::Deps {
            home: ctx.home.clone(),
            store,
            key: shoal_node::load_key(&ctx.home)?,
            clock: shoal_node::system_clock(),
            transport: shoal_node::Transport::Tcp,
            api: Some(listener),
        };
        let mut running = shoal_node::start(config, deps).await?;
        let api = running.api.map(|a| format!("http://{a}")).unwrap_or_default();
        println!("ready api={api} peer={}", running.addr);
        // The same libp2p address is what IPFS peers dial (Kubo's `ipfs
        // swarm connect` takes it as it is). On stderr: scripts read the
        // ready line alone from stdout and may close it.
        eprintln!("ipfs: bitswap 1.2.0 at {}, serving {} blocks", running.addr, args.ipfs_serve);
        use std::io::Write;
        let _ = std::io::stdout().flush();

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let failed = tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => None,
            e = running.api_failed() => Some(e),
        };
        if let Some(e) = failed {
            return Err(e.into());
        }
        running.stop().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}
