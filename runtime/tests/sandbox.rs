//! The escape-attempt guest must not get out of its mounts.

mod common;

use std::fs;

use common::{executor, stdout, task};
use shoal_runtime::Mount;

#[test]
fn escape_attempts_all_fail() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    fs::write(&secret, "top secret\n").unwrap();
    let input = tempfile::tempdir().unwrap();
    let data = input.path().join("data.txt");
    fs::write(&data, "input data\n").unwrap();
    std::os::unix::fs::symlink(&secret, input.path().join("link")).unwrap();
    let output = tempfile::tempdir().unwrap();

    let mut t = task("escape", &[]);
    t.mounts = vec![Mount::new(input.path(), "/inputs")];
    t.outputs = Some(output.path().to_path_buf());
    let o = executor().run(&t).unwrap();
    let out = stdout(&o);
    // Shown with --nocapture: which errno each attempt got.
    println!("{out}");
    assert!(o.success(), "{:?}\n{out}", o.failure);
    assert!(!out.contains("ESCAPED"), "{out}");
    assert!(out.contains("escapes: 0"), "{out}");
    // Every attempt was made and refused.
    for what in [
        "dotdot",
        "absolute",
        "symlink-out",
        "write-input",
        "create-in-input",
        "hardlink",
        "unlink-input",
        "rename-input",
    ] {
        assert!(out.contains(&format!("denied {what}")), "{what} missing:\n{out}");
    }
    assert_eq!(fs::read_to_string(&data).unwrap(), "input data\n");
    assert_eq!(fs::read_to_string(&secret).unwrap(), "top secret\n");
    assert!(!input.path().join("new.txt").exists());
}

#[test]
fn guest_path_traversal_in_task_is_refused() {
    let input = tempfile::tempdir().unwrap();
    for guest in ["/inputs/../etc", "inputs", "/outputs", "/outputs/x", "/"] {
        let mut t = task("hello", &[]);
        t.mounts = vec![Mount::new(input.path(), guest)];
        let e = executor().run(&t).unwrap_err();
        assert!(e.to_string().contains("guest path"), "{guest}: {e}");
    }
}
