//! Memory does not grow with message size: a 40 MB message streams through fixed
//! buffers into the spool, byte-exact.

use std::io::Read;

use mailspool::{Config, Mailspool, MessageSource, SendMail};

/// Peak resident set of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Generates `remaining` bytes of CRLF lines without holding them.
struct Lines {
    remaining: u64,
    pos: usize,
}

const LINE: &[u8] = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";

impl Read for Lines {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        for b in &mut buf[..n] {
            *b = LINE[self.pos % LINE.len()];
            self.pos += 1;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[test]
fn a_40_mb_message_streams_in_fixed_memory() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        spool_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let spool = Mailspool::open(config).unwrap();
    let lines = 600_000u64;
    let body_len = LINE.len() as u64 * lines; // 39.6 MB of CRLF lines
    let head = b"To: a@example.org\r\nFrom: b@example.org\r\nSubject: big\r\n\r\n".as_slice();
    let before = peak_rss_kib();
    let sent = spool
        .send_mail(SendMail::new(MessageSource::Reader(Box::new(head.chain(
            Lines {
                remaining: body_len,
                pos: 0,
            },
        )))))
        .unwrap();
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "peak RSS grew by {grown} KiB for a 40 MB message"
    );
    // CRLF became LF: one byte less per line.
    let stored = std::fs::metadata(&sent.nodes[0]).unwrap().len();
    let headers = std::fs::read(&sent.nodes[0]).unwrap();
    let header_end = headers.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
    assert_eq!(stored - header_end as u64, body_len - lines);
    assert!(!headers[header_end..].contains(&b'\r'));
}
