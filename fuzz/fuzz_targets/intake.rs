//! Message intake: header block, address lists, body copier; never panics, and what is
//! accepted as an address passes the envelope checks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailspool_message::{BodyCopier, address, read_head};

fuzz_target!(|data: &[u8]| {
    let dot_ends = data.first().is_some_and(|b| b & 1 == 1);
    let mut input = data;
    if let Ok(head) = read_head(&mut input, 4096, dot_ends) {
        for list in [head.headers.recipients(), head.headers.from_address().map(|f| f.into_iter().collect())] {
            if let Ok(addrs) = list {
                for a in addrs {
                    if !a.is_empty() {
                        assert!(address::check_address(&a).is_ok(), "{a:?}");
                    }
                }
            }
        }
        let mut out = Vec::new();
        let _ = BodyCopier::new(dot_ends).copy(&head.body_start, &mut input, &mut out, 1 << 20);
        assert!(!out.windows(2).any(|w| w == b"\r\n"), "CRLF left in the stored body");
    }
});
