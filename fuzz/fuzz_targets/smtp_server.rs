//! The listener's parsers: command lines (smtp-proto) and the DATA/BDAT reader. DATA
//! must end only at CRLF "." CRLF, and feeding in two pieces must equal one piece.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailspool_serve::data::DataReader;

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n').take(64) {
        let _ = smtp_proto::Request::parse(&mut line.iter());
    }
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut whole = DataReader::data(1 << 20);
    let mut out = Vec::new();
    let used = whole.feed(data, &mut out);
    if whole.done() {
        let c = &data[..used];
        assert!(c == b".\r\n" || c.ends_with(b"\r\n.\r\n"));
    }
    let mut parts = DataReader::data(1 << 20);
    let mut out2 = Vec::new();
    let first = parts.feed(&data[..split.min(used)], &mut out2);
    parts.feed(&data[first..used], &mut out2);
    assert_eq!(parts.done(), whole.done());
    assert_eq!(parts.violation(), whole.violation());
    let mut bdat = DataReader::bdat(1 << 20);
    bdat.feed(data, &mut Vec::new());
    bdat.finish();
});
