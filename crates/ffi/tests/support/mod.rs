//! What the C and Perl tests share: where cargo put the library, and reading back what
//! a binding queued through the Rust library (independent of the binding under test).

#![allow(dead_code)] // Each test binary uses its own part.

use std::path::{Path, PathBuf};

use mailspool::{Config, Mailspool, QueueEntry};

/// target/debug (or release), where libmailspool.so and .a are, after building them.
/// `cargo test` builds no cdylib or staticlib for integration tests (they link only an
/// rlib, and this crate has none), so the test asks cargo for them: with the test's own
/// profile and target dir it only links what is already compiled.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/debug/deps/<test> -> target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--quiet", "--lib", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(dir.parent().expect("target dir"));
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "cargo build of libmailspool failed");
    dir
}

/// The `mailspool` program beside the library (the Perl module's daemon side runs it),
/// built as `lib_dir` builds the library.
pub fn mailspool_bin() -> PathBuf {
    let dir = lib_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "mailspool", "--bin", "mailspool"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"))
        .arg("--target-dir")
        .arg(dir.parent().expect("target dir"));
    if dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(
        build.status().expect("cargo runs").success(),
        "cargo build of mailspool failed"
    );
    dir.join("mailspool")
}

/// The spool's nodes, sorted by recipient then id.
pub fn queue(spool: &Path) -> Vec<QueueEntry> {
    let config = Config {
        spool_dir: spool.to_owned(),
        ..Config::default()
    };
    let mut q = Mailspool::open(config).unwrap().queue().unwrap();
    q.sort_by(|a, b| (&a.to, &a.id).cmp(&(&b.to, &b.id)));
    q
}

/// The stored message of a node.
pub fn node_text(spool: &Path, e: &QueueEntry) -> String {
    let path = spool.join(e.tier.to_string()).join(&e.node);
    String::from_utf8(std::fs::read(&path).unwrap()).unwrap()
}

/// The header block of a stored message.
pub fn header_block(text: &str) -> &str {
    text.split_once("\n\n").map_or(text, |(h, _)| h)
}

/// A config file that sends nothing anywhere (the tests only queue), so a machine's own
/// /etc/mailspool/mailspool.toml cannot change what they see.
pub fn quiet_config(dir: &Path) -> PathBuf {
    let path = dir.join("mailspool.toml");
    std::fs::write(&path, "hostname = \"test.host\"\n").unwrap();
    path
}
