//! `shoal receipt verify`: checks a job's signed receipt offline, from its
//! block alone (fetched from `--node` first if it is not in the local
//! store). See `docs/receipts.md`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use shoal_storage::Cid;

use crate::store::Store;
use crate::{output, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum ReceiptCmd {
    /// Check every signature, that each reveal opens its commitment, that
    /// a quorum of distinct node keys attested the result, and that the
    /// job CID is its spec's. Exits 1 naming the first failure.
    Verify {
        /// The receipt's CID (`shoal job describe` prints it).
        cid: Cid,
        /// Count only attestations by these node peer ids (one per line;
        /// `#` starts a comment).
        #[arg(long, value_name = "FILE")]
        trust_keys: Option<PathBuf>,
    },
}

pub fn receipt(ctx: &Ctx, cmd: ReceiptCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ReceiptCmd::Verify { cid, trust_keys } => verify(ctx, cid, trust_keys),
    }
}

fn verify(ctx: &Ctx, cid: Cid, trust_keys: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let trusted = match &trust_keys {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the trusted keys {}", path.display()))?;
            let keys: BTreeSet<String> = text
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(|l| {
                    l.parse::<libp2p::PeerId>()
                        .map(|p| p.to_string())
                        .with_context(|| format!("{}: {l:?} is not a peer id", path.display()))
                })
                .collect::<anyhow::Result<_>>()?;
            Some(keys)
        }
        None => None,
    };
    let store = Store::open(ctx)?;
    crate::cmd_net::fetch_if_missing(ctx, store.get(), &cid.to_string())?;
    let block = store.get().get(&cid).with_context(|| {
        format!("cannot read the receipt {cid}; fetch it with --node URL from the node that ran the job")
    })?;
    if shoal_scheduler::pipeline::is_pipeline_receipt(block.data()) {
        return verify_pipeline(ctx, &store, cid, block.data(), trusted.as_ref());
    }
    let v = shoal_scheduler::receipt::verify(block.data(), Some(&cid), trusted.as_ref())
        .with_context(|| format!("receipt {cid} does not verify"))?;
    if ctx.json {
        output::json(&serde_json::json!({
            "receipt": cid.to_string(),
            "verified": true,
            "job_cid": v.job_cid.to_string(),
            "result": v.result.map(|c| c.to_string()),
            "failure": v.failure,
            "submitter": v.submitter,
            "quorum": v.quorum,
            "attested_by": v.attested_by,
        }))?;
    } else {
        println!("receipt {cid} verified");
        println!("job cid: {}", v.job_cid);
        match (&v.result, &v.failure) {
            (Some(r), _) => println!("result:  {r}"),
            (None, f) => println!("failed:  {}", f.as_deref().unwrap_or_default()),
        }
        if let Some(s) = &v.submitter {
            println!("submitted by {s}");
        }
        if v.result.is_some() {
            println!("attested by {} distinct node key(s), quorum {}:", v.attested_by.len(), v.quorum);
            for k in &v.attested_by {
                println!("  {k}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A pipeline receipt: the blocks it links (the pipeline as submitted and
/// each step's receipt) are fetched from `--node` when missing here, then
/// everything is checked offline.
fn verify_pipeline(
    ctx: &Ctx,
    store: &Store,
    cid: Cid,
    bytes: &[u8],
    trusted: Option<&BTreeSet<String>>,
) -> anyhow::Result<ExitCode> {
    use shoal_scheduler::pipeline::PipelineReceipt;
    if let Ok(r) = serde_json::from_slice::<PipelineReceipt>(bytes) {
        for linked in std::iter::once(&r.document).chain(r.steps.iter().map(|s| &s.receipt)) {
            // A block that cannot be fetched is named by verification.
            let _ = crate::cmd_net::fetch_if_missing(ctx, store.get(), linked);
        }
    }
    let get = |c: &Cid| store.get().get(c).ok().map(|b| b.data().to_vec());
    let v = shoal_scheduler::pipeline::verify_pipeline(bytes, Some(&cid), trusted, &get)
        .with_context(|| format!("pipeline receipt {cid} does not verify"))?;
    if ctx.json {
        let steps: Vec<serde_json::Value> = v
            .steps
            .iter()
            .map(|(name, s)| {
                serde_json::json!({
                    "step": name,
                    "job_cid": s.job_cid.to_string(),
                    "result": s.result.map(|c| c.to_string()),
                    "attested_by": s.attested_by,
                })
            })
            .collect();
        output::json(
            &serde_json::json!({ "receipt": cid.to_string(), "verified": true, "pipeline": true, "steps": steps }),
        )?;
    } else {
        println!("pipeline receipt {cid} verified: {} step(s), each chained to the results it read", v.steps.len());
        for (name, s) in &v.steps {
            println!(
                "  {name}: job {} result {} ({} node key(s), quorum {})",
                s.job_cid,
                s.result.map(|c| c.to_string()).unwrap_or_default(),
                s.attested_by.len(),
                s.quorum
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
