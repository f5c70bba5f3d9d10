//! A tier entry whose name does not parse is warned about once, not at every scan
//! (fsck lists them all; the daemon's log is not flooded).

mod common;

use common::*;
use mailspool_deliver::{PassOptions, Selection};

#[tokio::test]
async fn an_unparsable_name_is_warned_about_once() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    std::fs::write(dir.path().join("0/garbage-name"), "x").unwrap();
    std::fs::write(dir.path().join("0/also garbage"), "x").unwrap();
    let engine = engine(spool, config(&[]));
    let opts = PassOptions {
        selection: Selection::All,
        ..Default::default()
    };
    for _ in 0..5 {
        engine.run_pass(&opts).await.unwrap();
    }
    let text = logs.text();
    let warned = text.matches("is not a node name").count();
    assert_eq!(warned, 2, "once per name over five scans:\n{text}");
}
