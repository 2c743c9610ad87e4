//! The storage verbs of the `shoal` binary, run as a user would, including
//! every kind of bad input: each must fail with a clear message and leave
//! the store consistent.

mod common;
use common::random_bytes;
use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn shoal(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shoal"));
    c.env("SHOAL_HOME", home).env_remove("SHOAL_IPFS_API");
    c
}

fn run(home: &Path, args: &[&str]) -> Output {
    shoal(home).args(args).output().unwrap()
}

fn ok(home: &Path, args: &[&str]) -> String {
    let o = run(home, args);
    assert!(o.status.success(), "shoal {args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn fails(home: &Path, args: &[&str]) -> String {
    let o = run(home, args);
    assert!(!o.status.success(), "shoal {args:?} should fail");
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one clear line: {err}");
    let msg = &err["error: ".len()..];
    // Lowercase prose; a message may start with a CID (`Qm…`).
    assert!(!msg.starts_with(char::is_uppercase) || msg.starts_with("Qm"), "lowercase: {err}");
    err
}

#[test]
fn add_cat_get_ls_roundtrip_and_json() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let data = t.path().join("data");
    fs::create_dir_all(data.join("sub")).unwrap();
    fs::write(data.join("a.txt"), b"hello world\n").unwrap();
    fs::write(data.join("sub/b.bin"), random_bytes(600_000, 3)).unwrap();
    let out = ok(&home, &["add", data.to_str().unwrap()]);
    let root = out.lines().last().unwrap().split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(
        ok(&home, &["add", "-q", data.join("a.txt").to_str().unwrap()]).trim(),
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    );
    assert_eq!(ok(&home, &["cat", &format!("{root}/a.txt")]), "hello world\n");
    let ls = ok(&home, &["ls", &root]);
    assert!(ls.contains(" a.txt") && ls.contains(" sub"), "{ls}");
    let dest = t.path().join("out");
    ok(&home, &["get", &root, "-o", dest.to_str().unwrap()]);
    assert_eq!(fs::read(dest.join("sub/b.bin")).unwrap(), random_bytes(600_000, 3));
    // get never overwrites.
    let err = fails(&home, &["get", &root, "-o", dest.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");

    // --json on every verb gives one JSON document.
    for args in [
        vec!["--json", "add", data.to_str().unwrap()],
        vec!["--json", "ls", &root],
        vec!["--json", "pin", "ls"],
        vec!["--json", "repo", "stat"],
        vec!["--json", "repo", "verify"],
    ] {
        let out = ok(&home, &args);
        let _: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
    }
    let o = run(&home, &["--json", "cat", "QmNotACid"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("not a valid cid"));

    // --only-hash stores nothing.
    let other = t.path().join("other-home");
    let h = ok(&other, &["add", "-q", "--only-hash", data.to_str().unwrap()]);
    assert_eq!(h.trim(), root);
    assert!(ok(&other, &["pin", "ls"]).trim().is_empty());
}

#[test]
fn bad_input_gets_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let err = fails(&home, &["add", "/no/such/path"]);
    assert!(err.contains("/no/such/path") && err.contains("check the path"), "{err}");
    let err = fails(&home, &["cat", "QmNotACid"]);
    assert!(err.contains("\"QmNotACid\" is not a valid cid"), "{err}");
    let err = fails(&home, &["cat", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"]);
    assert!(err.contains("is not in the store; fetch it first"), "{err}");
    let f = t.path().join("f");
    fs::write(&f, b"x").unwrap();
    let cid = ok(&home, &["add", "-q", f.to_str().unwrap()]);
    let err = fails(&home, &["cat", &format!("{}/nope", cid.trim())]);
    assert!(err.contains("is a file, not a directory"), "{err}");
    let err = fails(&home, &["pin", "rm", "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"]);
    assert!(err.contains("is not pinned"), "{err}");
    let err = fails(&home, &["--ipfs-api", "http://127.0.0.1:1", "add", f.to_str().unwrap()]);
    assert!(err.contains("cannot reach the daemon"), "{err}");
    let o = run(&home, &["add", "--no-such-flag", "x"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--no-such-flag"));
}

#[test]
fn corrupt_blocks_are_detected_and_never_served() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let f = t.path().join("f");
    fs::write(&f, random_bytes(300_000, 5)).unwrap();
    let cid = ok(&home, &["add", "-q", "--cid-version", "1", f.to_str().unwrap()]).trim().to_string();
    // Damage one block in place: the middle of the only pack lies inside
    // the first chunk (262144 bytes of the 300 kB).
    let packs: Vec<_> = fs::read_dir(home.join("blocks/packs")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(packs.len(), 1, "{packs:?}");
    let victim = &packs[0];
    let mut bytes = fs::read(victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(victim, &bytes).unwrap();
    let o = run(&home, &["cat", &cid]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is corrupt on disk"));
    // Nothing of the damaged chunk was served, neither around the flipped
    // byte nor elsewhere.
    let damaged = &bytes[middle - 32..middle + 32];
    let chunk = &random_bytes(300_000, 5)[..262_144];
    assert!(
        !o.stdout.windows(64).any(|w| w == damaged || chunk.windows(64).any(|b| b == w)),
        "corrupt bytes were served"
    );
    let o = run(&home, &["repo", "verify"]);
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    // Named as the user knows the data: the pin, the chunk of the file,
    // and what to do (not "run `shoal repo verify`", which this is).
    assert!(out.contains("is corrupt on disk") && out.contains(&format!("damaged pin: {cid}")), "{out}");
    assert!(out.contains("chunk 0 of the file") && out.contains("shoal pin rm"), "{out}");
    assert!(!out.contains("repo verify"), "{out}");
    // gc refuses to guess what is garbage below damage.
    let err = fails(&home, &["repo", "gc"]);
    assert!(err.contains("gc removed nothing"), "{err}");
}

#[test]
fn car_files_roundtrip_and_bad_ones_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let f = t.path().join("f");
    fs::write(&f, random_bytes(900_000, 8)).unwrap();
    let cid = ok(&a, &["add", "-q", f.to_str().unwrap()]).trim().to_string();
    let car = t.path().join("x.car");
    ok(&a, &["car", "export", &cid, "-o", car.to_str().unwrap()]);
    let out = ok(&b, &["car", "import", car.to_str().unwrap()]);
    assert!(out.contains(&cid));
    assert!(ok(&b, &["pin", "ls"]).contains(&cid));
    assert_eq!(shoal(&b).args(["cat", &cid]).output().unwrap().stdout, random_bytes(900_000, 8));

    let bytes = fs::read(&car).unwrap();
    let cut = t.path().join("cut.car");
    fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let c = t.path().join("c");
    let err = fails(&c, &["car", "import", cut.to_str().unwrap()]);
    assert!(err.contains("truncated") && err.contains("cut.car"), "{err}");
    assert!(ok(&c, &["pin", "ls"]).trim().is_empty(), "no pin from a truncated car");
    let junk = t.path().join("junk.car");
    fs::write(&junk, b"this is not a car file at all").unwrap();
    let err = fails(&c, &["car", "import", junk.to_str().unwrap()]);
    assert!(err.contains("junk.car"), "{err}");
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 10] ^= 1;
    let bad = t.path().join("bad.car");
    fs::write(&bad, &flipped).unwrap();
    let err = fails(&c, &["car", "import", bad.to_str().unwrap()]);
    assert!(err.contains("does not match its hash"), "{err}");
}

#[test]
fn concurrent_adds_of_the_same_data() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let f = t.path().join("f");
    fs::write(&f, random_bytes(3_000_000, 11)).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| shoal(&home).args(["add", "-q", f.to_str().unwrap()]).stdout(Stdio::piped()).spawn().unwrap())
        .collect();
    let cids: Vec<String> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8(o.stdout).unwrap().trim().to_string()
        })
        .collect();
    assert!(cids.windows(2).all(|w| w[0] == w[1]), "{cids:?}");
    assert_eq!(ok(&home, &["pin", "ls"]).lines().count(), 1);
    ok(&home, &["repo", "verify"]);
}

#[test]
fn a_killed_import_leaves_no_pin_and_gc_cleans_up() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let f = t.path().join("big");
    {
        let mut w = std::io::BufWriter::new(fs::File::create(&f).unwrap());
        for i in 0..768u64 {
            std::io::Write::write_all(&mut w, &random_bytes(1 << 20, i + 1)).unwrap();
        }
    }
    let mut child = shoal(&home).args(["add", "-q", f.to_str().unwrap()]).stdout(Stdio::null()).spawn().unwrap();
    // Wait until some blocks are in its pack, then kill it mid-import.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let written = || -> u64 {
        let Ok(d) = fs::read_dir(home.join("blocks/packs")) else { return 0 };
        d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
    };
    loop {
        if written() > 5 << 20 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "import finished before it could be killed");
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(child.try_wait().unwrap().is_none(), "import finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ok(&home, &["pin", "ls"]).trim().is_empty());
    let v = ok(&home, &["repo", "verify"]);
    assert!(v.contains(": ok"), "{v}");
    // The killed import's pack holds no indexed block: stat counts it,
    // gc removes it.
    let stat = ok(&home, &["repo", "stat"]);
    assert!(
        stat.contains("blocks: 0") && stat.contains("packs: 1 ") && stat.contains("1 packs without blocks"),
        "{stat}"
    );
    let gc = ok(&home, &["repo", "gc"]);
    assert!(gc.contains("kept 0"), "{gc}");
    let given_back: u64 = gc.split("; ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(given_back > 5 << 20, "{gc}");
    let stat = ok(&home, &["repo", "stat"]);
    assert!(stat.contains("blocks: 0") && stat.contains("packs: 0 "), "{stat}");
    assert_eq!(fs::read_dir(home.join("blocks/packs")).unwrap().count(), 0);
}

/// A full disk during import: a 4 MiB tmpfs in a private mount namespace
/// (`unshare -rm`, so no root is needed and nothing outlives the test).
#[test]
fn a_full_disk_fails_cleanly_and_loses_nothing() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let small = t.path().join("small");
    fs::write(&small, b"small file\n").unwrap();
    let big = t.path().join("big");
    fs::write(&big, random_bytes(8 << 20, 2)).unwrap();
    let script = format!(
        r#"set -u
mount -t tmpfs -o size=4m tmpfs {mnt} || exit 99
S={bin}; export SHOAL_HOME={mnt}/home
$S add -q {small} > {out}/first || exit 3
$S add -q {big} 2> {out}/err; echo $? > {out}/rc
$S pin ls > {out}/pins
$S repo verify > {out}/verify; echo $? >> {out}/verify
$S cat $(cat {out}/first) > {out}/cat
$S repo gc > {out}/gc
$S add -q {small} > {out}/again
"#,
        mnt = mnt.display(),
        bin = env!("CARGO_BIN_EXE_shoal"),
        small = small.display(),
        big = big.display(),
        out = t.path().display(),
    );
    let st =
        Command::new("unshare").args(["-rm", "sh", "-c", &script]).status().expect("unshare (util-linux) is needed");
    assert_ne!(st.code(), Some(99), "cannot mount a tmpfs in a user namespace here");
    assert!(st.success(), "script failed: {st:?}");
    let read = |n: &str| fs::read_to_string(t.path().join(n)).unwrap();
    assert_eq!(read("rc").trim(), "1");
    let err = read("err");
    assert!(err.contains("no space left on device"), "{err}");
    assert!(err.contains("nothing was pinned"), "{err}");
    let first = read("first");
    assert_eq!(read("pins").trim(), format!("{} recursive", first.trim()), "only the first add is pinned");
    assert!(read("verify").contains(": ok"), "{}", read("verify"));
    assert_eq!(read("cat"), "small file\n");
    // gc removes the failed import's pack, which holds no indexed block.
    let gc = read("gc");
    let given_back: u64 = gc.split("; ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(given_back > 2 << 20, "{gc}");
    assert_eq!(read("again"), first);
}
