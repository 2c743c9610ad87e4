//! `shoal-sim`: runs the discrete-event simulation and prints its report
//! (see the crate documentation for the model).

use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shoal_sim::{analytic, run, Config, Report};

#[derive(Parser)]
#[command(
    name = "shoal-sim",
    about = "Run a Shoal network of real nodes in one process (the default), or simulate one in virtual time",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Real nodes in one process over libp2p's memory transport (the default).
    Net(NetArgs),
    /// The discrete-event simulation.
    Des(Des),
}

#[derive(Args, Clone)]
struct NetArgs {
    /// Compute nodes.
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    /// Requester nodes (they take the jobs, in turn, and compute nothing).
    #[arg(long, default_value_t = 1)]
    requesters: usize,
    /// Jobs.
    #[arg(long, default_value_t = 5_000)]
    jobs: usize,
    /// Executions per job.
    #[arg(long, default_value_t = 3)]
    redundancy: u32,
    /// Slots per compute node.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Jobs submitted per second (0: all at once).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Peers each node dials at start.
    #[arg(long, default_value_t = 4)]
    degree: usize,
    /// Seconds the network is left to settle after the last node started,
    /// before it is watched idle.
    #[arg(long, default_value_t = 30)]
    settle: u64,
    /// Seconds the idle network is watched before the jobs.
    #[arg(long, default_value_t = 10)]
    idle: u64,
    /// Share of compute nodes stopped and restarted during the jobs.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Compute nodes started together.
    #[arg(long, default_value_t = 10)]
    start_batch: usize,
    /// Announcements per second the whole network gossips.
    #[arg(long, default_value_t = shoal_node::GOSSIP_RATE)]
    gossip_rate: u64,
    /// The connection manager's low and high marks (see `net::Connections`).
    #[arg(long, num_args = 2, value_names = ["LOW", "HIGH"])]
    connections: Option<Vec<usize>>,
    /// The nodes join the IPFS DHTs too (as `shoal node` does by default).
    #[arg(long)]
    ipfs_dht: bool,
    /// Secure connections with Noise, as on the real network (the default
    /// is plaintext: nothing outside the process can see them).
    #[arg(long)]
    noise: bool,
    /// Worker threads of the compute nodes' runtime (the requesters have one of their own).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

impl NetArgs {
    fn config(&self) -> shoal_sim::net::Config {
        let mut c = shoal_sim::net::Config::new(self.nodes, self.jobs, self.redundancy);
        c.requesters = self.requesters;
        c.slots = self.slots;
        c.rate = self.rate;
        c.degree = self.degree;
        c.idle = std::time::Duration::from_secs(self.idle);
        c.settle = std::time::Duration::from_secs(self.settle);
        c.churn = self.churn;
        c.seed = self.seed;
        c.start_batch = self.start_batch;
        c.node.gossip_rate = self.gossip_rate;
        c.node.network.ipfs_dht = self.ipfs_dht;
        if self.noise {
            c.security = shoal_sim::net::Security::Noise;
        }
        if let Some(lh) = &self.connections {
            c.node.network.connections.low = lh[0];
            c.node.network.connections.high = lh[1];
        }
        c
    }
}

fn run_net(args: &NetArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| "off".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .thread_name("shoal-compute")
        .enable_all()
        .build()?;
    let cfg = args.config();
    let t = Instant::now();
    let report = rt.block_on(shoal_sim::net::run(&cfg))?;
    println!("{report}");
    println!("wall time {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

#[derive(Args)]
struct Des {
    /// Compute nodes.
    #[arg(long, default_value_t = 100_000)]
    nodes: usize,
    /// Honest jobs.
    #[arg(long, default_value_t = 1_000_000)]
    jobs: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of nodes that lie.
    #[arg(long, default_value_t = 0.0)]
    liars: f64,
    /// Liars are one Sybil group returning the same wrong result.
    #[arg(long)]
    collude: bool,
    /// Liars lie with this probability each time (1: always).
    #[arg(long, default_value_t = 1.0)]
    sometimes: f64,
    /// Share of nodes that accept bids and go silent.
    #[arg(long, default_value_t = 0.0)]
    silent: f64,
    /// Share of nodes leaving per minute (they come back after about a minute).
    #[arg(long, default_value_t = 0.0)]
    churn_per_min: f64,
    /// Flooding requesters.
    #[arg(long, default_value_t = 0)]
    flood_requesters: usize,
    /// Jobs per second each flooding requester submits.
    #[arg(long, default_value_t = 1_000.0)]
    flood_rate: f64,
    /// Busy executions allowed per submitter (0: no quota).
    #[arg(long, default_value_t = 0)]
    quota_executions: usize,
    /// Share of all slots the honest workload keeps busy.
    #[arg(long, default_value_t = 0.5)]
    load: f64,
    /// Random nodes in each placement's candidate view.
    #[arg(long, default_value_t = 32)]
    sample: usize,
    /// Extra executions allowed to settle a disagreement.
    #[arg(long, default_value_t = 0)]
    max_extra: u32,
    /// Hide track records from the planner (what the analytic prediction assumes).
    #[arg(long)]
    no_reputation: bool,
    /// Print the liar-fraction table (1, 5, 10, 20, 30%) for colluding and
    /// independent liars, and the adversary table, instead of one run.
    #[arg(long)]
    sweep: bool,
}

impl Des {
    fn config(&self) -> Config {
        let mut c = Config::new(self.nodes, self.jobs, self.seed);
        c.liars = self.liars;
        c.collude = self.collude;
        c.sometimes = self.sometimes;
        c.silent = self.silent;
        c.churn_per_min = self.churn_per_min;
        c.flood_requesters = self.flood_requesters;
        c.flood_rate_per_s = self.flood_rate;
        c.quota = self.quota_executions;
        c.load = self.load;
        c.sample = self.sample;
        c.max_extra = self.max_extra;
        c.reputation = !self.no_reputation;
        c
    }
}

fn timed(cfg: &Config) -> anyhow::Result<(Report, f64)> {
    let t = Instant::now();
    let r = run(cfg).with_context(|| format!("simulating {} nodes, {} jobs", cfg.nodes, cfg.jobs))?;
    Ok((r, t.elapsed().as_secs_f64()))
}

fn sweep(base: &Config) -> anyhow::Result<()> {
    println!(
        "liar sweep: {} nodes, {} jobs each, redundancy 3, quorum 2, max_extra {}, seed {}",
        base.nodes, base.jobs, base.max_extra, base.seed
    );
    println!(
        "{:>6} {:>11} | {:>9} {:>9} {:>9} {:>9} | {:>12} {:>12} | {:>9} {:>9}",
        "liars",
        "kind",
        "predicted",
        "blind",
        "±99.9%",
        "ranked",
        "ranked 1st⅒",
        "ranked last⅒",
        "nomaj pred",
        "nomaj sim"
    );
    for f in [0.01, 0.05, 0.10, 0.20, 0.30] {
        for collude in [true, false] {
            let mut blind = base.clone();
            blind.liars = f;
            blind.collude = collude;
            blind.reputation = false;
            let mut ranked = blind.clone();
            ranked.reputation = true;
            let (b, _) = timed(&blind)?;
            let (r, _) = timed(&ranked)?;
            let nomaj = b.no_consensus() as f64 / b.jobs.max(1) as f64;
            println!(
                "{:>5.0}% {:>11} | {:>8.3}% {:>8.3}% {:>8.3}% {:>8.3}% | {:>11.3}% {:>11.3}% | {:>8.3}% {:>8.3}%",
                f * 100.0,
                if collude { "colluding" } else { "independent" },
                b.predicted_wrong * 100.0,
                b.wrong_rate() * 100.0,
                analytic::binomial_halfwidth(b.predicted_wrong, b.completed) * 100.0,
                r.wrong_rate() * 100.0,
                r.first_tenth.1 as f64 / r.first_tenth.0.max(1) as f64 * 100.0,
                r.last_tenth.1 as f64 / r.last_tenth.0.max(1) as f64 * 100.0,
                b.predicted_no_majority * 100.0,
                nomaj * 100.0,
            );
        }
    }
    println!();
    println!("adversaries (planner ranks by reputation):");
    println!(
        "{:<34} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8}",
        "scenario", "complete", "p50 ms", "p99 ms", "exec/job", "wrong", "lost", "h.wasted", "h.outvoted", "h.flood"
    );
    let scenario = |name: &str, f: &dyn Fn(&mut Config)| -> anyhow::Result<()> {
        let mut c = base.clone();
        f(&mut c);
        let (r, _) = timed(&c)?;
        let honest_all = r.honest_voted + r.honest_late + r.honest_wasted;
        println!(
            "{:<34} {:>8.3}% {:>8} {:>8} {:>8.3} {:>7.3}% {:>8} {:>7.2}% {:>10} {:>7.2}%",
            name,
            r.completion_rate() * 100.0,
            r.latency_ms.0,
            r.latency_ms.1,
            r.execs_per_job,
            r.wrong_rate() * 100.0,
            r.lost,
            r.honest_wasted as f64 / honest_all.max(1) as f64 * 100.0,
            r.honest_outvoted,
            r.honest_for_flood as f64 / (honest_all + r.honest_for_flood).max(1) as f64 * 100.0,
        );
        Ok(())
    };
    scenario("baseline", &|_| {})?;
    scenario("churn 5%/min", &|c| c.churn_per_min = 0.05)?;
    scenario("Sybil group 10% (colluding liars)", &|c| {
        c.liars = 0.10;
        c.collude = true;
    })?;
    scenario("liars 10%, lying half the time", &|c| {
        c.liars = 0.10;
        c.sometimes = 0.5;
    })?;
    scenario("silent 2% (accept, never answer)", &|c| c.silent = 0.02)?;
    scenario("silent 2%, reputation off", &|c| {
        c.silent = 0.02;
        c.reputation = false;
    })?;
    // Four flooders sending twice the honest rate between them: demand of
    // 150% of all slots while they last.
    let flood = base.honest_rate_per_s() / 2.0;
    scenario("4 flooders, no quota", &|c| {
        c.flood_requesters = 4;
        c.flood_rate_per_s = flood;
    })?;
    scenario("4 flooders, quota 64 busy each", &|c| {
        c.flood_requesters = 4;
        c.flood_rate_per_s = flood;
        c.quota = 64;
    })?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let des = match cli.command {
        None => return run_net(&cli.net),
        Some(Command::Net(net)) => return run_net(&net),
        Some(Command::Des(des)) => des,
    };
    let cfg = des.config();
    if des.sweep {
        let t = Instant::now();
        sweep(&cfg)?;
        println!("sweep wall time {:.1} s", t.elapsed().as_secs_f64());
        return Ok(());
    }
    let (report, wall) = timed(&cfg)?;
    println!("{report}");
    println!("wall time {wall:.1} s ({:.0} jobs/s of wall time)", report.jobs as f64 / wall.max(1e-9));
    Ok(())
}
