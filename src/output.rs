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
/// cause whose text the line already holds: library errors name their
/// cause in their own message (so they read well alone) and also return
/// it as their source, which would print the OS error twice.
pub fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.to_lowercase().contains(&c.to_lowercase()) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
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
