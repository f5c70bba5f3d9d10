//! What the C and Perl tests share: where cargo put the library, and reading back what
//! a binding queued through the Rust library (independent of the binding under test).

#![allow(dead_code)] // Each test binary uses its own part.

use std::path::{Path, PathBuf};

use mailspool::{Config, Mailspool, QueueEntry};

/// target/debug (or release): where libmailspool.so and .a are.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/debug/deps/<test> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
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
