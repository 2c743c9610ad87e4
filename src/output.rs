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
    let msg = message(e);
    if ctx.json {
        let _ = json(&serde_json::json!({ "error": msg }));
    } else {
        eprintln!("error: {msg}");
    }
}

/// The error and its causes in one line, `outer: inner: …`, leaving out a
/// cause whose text the line already holds (see [`shoal_node::message`]).
pub fn message(e: &anyhow::Error) -> String {
    shoal_node::message(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let os = std::io::Error::from_raw_os_error(2);
        let store = shoal_storage::Error::io("cannot create store directory", "/proc/nope/blocks", os);
        let e = anyhow::Error::new(store).context("cannot open the store in /proc/nope");
        let m = message(&e);
        assert_eq!(m.to_lowercase().matches("no such file or directory").count(), 1, "{m}");
        assert!(m.starts_with("cannot open the store in /proc/nope: cannot create store directory /proc/nope/blocks"));
        // A cause the message does not hold is kept.
        let e = anyhow::anyhow!("disk on fire").context("cannot write");
        assert_eq!(message(&e), "cannot write: disk on fire");
    }
}
