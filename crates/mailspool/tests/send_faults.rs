//! A full disk or an I/O error at any step of `send_mail` is a temporary failure (75)
//! or an I/O error (74), and leaves nothing in the spool.

use std::sync::Arc;

use mailspool::{Config, Mailspool, MessageSource, SendMail, Spool};
use mailspool_spool::{FaultMode, FaultyStorage};

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

#[test]
fn a_full_or_failing_disk_leaves_nothing_and_says_so() {
    let body = format!(
        "To: a@x.org, b@y.org\nFrom: me@z.org\n\n{}",
        "line\n".repeat(40_000)
    );
    for (errno, code) in [(ENOSPC, 75), (EIO, 74)] {
        for at in 0..7 {
            let dir = tempfile::tempdir().unwrap();
            let config = Config {
                spool_dir: dir.path().to_owned(),
                ..Config::default()
            };
            let spool = Spool::create(dir.path(), config.spool.clone())
                .unwrap()
                .with_storage(Arc::new(FaultyStorage::new(at, FaultMode::FailOnce, errno)));
            let ms = Mailspool::with_spool(config, spool);
            let err = ms
                .send_mail(SendMail::new(MessageSource::Bytes(body.as_bytes())))
                .expect_err("fault must surface");
            assert_eq!(err.exit_code(), code, "errno {errno} at step {at}: {err}");
            for sub in ["0", "tmp"] {
                assert_eq!(
                    std::fs::read_dir(dir.path().join(sub)).unwrap().count(),
                    0,
                    "errno {errno} at step {at}: {sub}/ not empty"
                );
            }
        }
    }
}
