//! A Rust job: writes the names of the files in /inputs, with their sizes,
//! to /outputs/names.txt and a count to stdout. Dependency-free so that
//! Debian's rustc 1.63 can build it offline (`make -C samples rust`).
use std::fs;
use std::io::Write;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/inputs".to_owned());
    let mut out = fs::File::create("/outputs/names.txt").expect("create /outputs/names.txt");
    let mut n = 0;
    // Shoal lists directories in sorted order, so the output is reproducible.
    for entry in fs::read_dir(&dir).expect("read input directory") {
        let entry = entry.expect("directory entry");
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        writeln!(out, "{}\t{}", entry.file_name().to_string_lossy(), len).expect("write");
        n += 1;
    }
    println!("{n} entries in {dir}");
}
