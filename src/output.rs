//! Printing results and errors, for people and for `--json`.

use std::io::Write;

use crate::Ctx;

/// Prints `value` as one JSON document on stdout.
pub fn json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Reports an error: `error: …` on stderr, or `{"error": …}` with `--json`.
pub fn error(ctx: &Ctx, e: &anyhow::Error) {
    let msg = format!("{e:#}");
    if ctx.json {
        let _ = json(&serde_json::json!({ "error": msg }));
    } else {
        eprintln!("error: {msg}");
    }
}
