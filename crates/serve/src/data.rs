//! The message data of a transaction, as the listener reads it: DATA (dot-stuffed,
//! ended by `CRLF.CRLF` and nothing else) or BDAT chunks (RFC 3030).
//!
//! This is where SMTP smuggling is stopped. Only CRLF is a line end: a bare LF or a bare
//! CR anywhere marks the message refused (and never ends it, so `\n.\n`, `\r.\r`,
//! `\r.\n`, `\n.\r\n` are just bytes inside one message that is then rejected whole);
//! NUL bytes and lines over 1000 bytes are refused too; the size limit is enforced while
//! reading. The stored form has LF line ends and no dot-stuffing.

/// Why a message's data is refused (reported after the end of the data, so that the
/// session stays in step with the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A LF not preceded by CR, or a CR not followed by LF.
    BareLineEnd,
    /// A NUL byte.
    Nul,
    /// A line over 1000 bytes with its CRLF.
    LineTooLong,
    /// More bytes than the size limit.
    TooLarge,
    /// 100 or more Received: headers: a mail loop.
    TooManyHops,
}

impl Violation {
    /// The SMTP reply refusing the message.
    pub fn reply(self) -> &'static str {
        match self {
            Violation::BareLineEnd => {
                "550 5.6.0 Message refused: bare CR or LF in the data (only CRLF ends a line)"
            }
            Violation::Nul => "550 5.6.0 Message refused: NUL byte in the data",
            Violation::LineTooLong => "550 5.6.0 Message refused: line longer than 1000 bytes",
            Violation::TooLarge => "552 5.3.4 Message exceeds the size limit",
            Violation::TooManyHops => "554 5.4.6 Too many hops (Received: headers): mail loop",
        }
    }
}

/// Longest text line, without its CRLF (RFC 5321 §4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 998;
/// Received: headers that mean a loop.
pub const MAX_HOPS: usize = 100;

/// Incremental reader of message data.
#[derive(Debug)]
pub struct DataReader {
    dot_stuffed: bool,
    max_size: u64,
    size: u64,
    line_start: bool,
    line_len: usize,
    cr: bool,
    dot_line: bool,
    in_headers: bool,
    head: Vec<u8>,
    hops: usize,
    violation: Option<Violation>,
    done: bool,
}

impl DataReader {
    /// For DATA: dot-stuffed, ended by `CRLF.CRLF`.
    pub fn data(max_size: u64) -> Self {
        Self::new(true, max_size)
    }

    /// For BDAT chunks: raw bytes, the chunk sizes say where it ends.
    pub fn bdat(max_size: u64) -> Self {
        Self::new(false, max_size)
    }

    fn new(dot_stuffed: bool, max_size: u64) -> Self {
        DataReader {
            dot_stuffed,
            max_size,
            size: 0,
            line_start: true,
            line_len: 0,
            cr: false,
            dot_line: false,
            in_headers: true,
            head: Vec::with_capacity(16),
            hops: 0,
            violation: None,
            done: false,
        }
    }

    /// The first thing wrong with the data so far.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// DATA only: the end marker was seen.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Bytes of the stored form so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn refuse(&mut self, v: Violation) {
        if self.violation.is_none() {
            self.violation = Some(v);
        }
    }

    fn emit(&mut self, b: u8, out: &mut Vec<u8>) {
        self.size += 1;
        if self.size > self.max_size {
            self.refuse(Violation::TooLarge);
        }
        if self.violation.is_none() {
            out.push(b);
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.in_headers {
            if self.line_len == 0 {
                self.in_headers = false;
            } else if self.head.len() >= 9 && self.head[..9].eq_ignore_ascii_case(b"received:") {
                self.hops += 1;
                if self.hops >= MAX_HOPS {
                    self.refuse(Violation::TooManyHops);
                }
            }
        }
        self.emit(b'\n', out);
        self.line_start = true;
        self.line_len = 0;
        self.dot_line = false;
        self.head.clear();
    }

    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
        if b == 0 {
            self.refuse(Violation::Nul);
        }
        if self.line_start && self.dot_stuffed && b == b'.' && !self.dot_line {
            // The stuffed dot: dropped, but remembered in case the line is only ".".
            self.dot_line = true;
            self.line_start = false;
            self.line_len += 1;
            return;
        }
        self.line_start = false;
        self.line_len += 1;
        if self.line_len > MAX_TEXT_LINE {
            self.refuse(Violation::LineTooLong);
        }
        if self.in_headers && self.head.len() < 9 {
            self.head.push(b);
        }
        self.emit(b, out);
    }

    /// Read `input`, appending the stored form to `out`. Returns how many bytes were
    /// used: for DATA, fewer than given when the end marker came (the rest are the next
    /// commands).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        for (i, &b) in input.iter().enumerate() {
            if self.done {
                return i;
            }
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    if self.dot_stuffed && self.dot_line && self.line_len == 1 {
                        // CRLF "." CRLF: the end, and the only one.
                        self.done = true;
                        return i + 1;
                    }
                    self.end_line(out);
                    continue;
                }
                self.refuse(Violation::BareLineEnd);
                self.text(b'\r', out);
            }
            match b {
                b'\r' => self.cr = true,
                b'\n' => {
                    self.refuse(Violation::BareLineEnd);
                    self.text(b'\n', out);
                }
                _ => self.text(b, out),
            }
        }
        input.len()
    }

    /// BDAT LAST: the data ends here; a dangling CR is a bare CR.
    pub fn finish(&mut self) {
        if self.cr {
            self.cr = false;
            self.refuse(Violation::BareLineEnd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(data: &[u8]) -> (Vec<u8>, usize, Option<Violation>, bool) {
        let mut r = DataReader::data(1 << 20);
        let mut out = Vec::new();
        let used = r.feed(data, &mut out);
        (out, used, r.violation(), r.done())
    }

    #[test]
    fn only_crlf_dot_crlf_ends_and_dots_are_unstuffed() {
        let (out, used, v, done) = run(b"Subject: x\r\n\r\n..a\r\n.b\r\n.\r\nMAIL FROM:<x>\r\n");
        assert!(done && v.is_none());
        assert_eq!(out, b"Subject: x\n\n.a\nb\n");
        assert_eq!(used, 26);
        // The end marker right after DATA's own CRLF: an empty message.
        let (out, _, _, done) = run(b".\r\n");
        assert!(done && out.is_empty());
    }

    #[test]
    fn smuggling_attempts_never_end_the_data_and_are_refused() {
        for probe in [
            &b"a\r\n\n.\n"[..],
            b"a\r\n\r.\r",
            b"a\r\n\r.\n",
            b"a\r\n\n.\r\n",
            b"a\n.\r\n",
            b"a\r\n.\n",
            b"a\r\n.\r\r\n",
        ] {
            let mut data = probe.to_vec();
            data.extend_from_slice(
                b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n.\r\n",
            );
            let (_, used, v, done) = run(&data);
            assert!(done, "{probe:?}: the real end is found");
            assert_eq!(used, data.len(), "{probe:?}: ended early: smuggling");
            assert_eq!(v, Some(Violation::BareLineEnd), "{probe:?}");
        }
        let (_, _, v, done) = run(b"a\r\n\x00.\r\n.\r\n");
        assert!(done);
        assert_eq!(v, Some(Violation::Nul));
    }

    #[test]
    fn limits() {
        let long = [b'x'; 999];
        let mut d = long.to_vec();
        d.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(run(&d).2, Some(Violation::LineTooLong));
        let mut r = DataReader::data(10);
        let mut out = Vec::new();
        r.feed(b"0123456789abc\r\n.\r\n", &mut out);
        assert!(r.done());
        assert_eq!(r.violation(), Some(Violation::TooLarge));
        let mut hops = b"Received: x\r\n".repeat(100);
        hops.extend_from_slice(b"\r\nbody\r\n.\r\n");
        assert_eq!(run(&hops).2, Some(Violation::TooManyHops));
        let mut fine = b"Received: x\r\n".repeat(99);
        fine.extend_from_slice(b"\r\nReceived: in the body\r\n.\r\n");
        assert_eq!(run(&fine).2, None);
    }

    #[test]
    fn bdat_is_raw_and_chunking_does_not_matter() {
        let data = b"Subject: x\r\n\r\n.not stuffed\r\nline\r\n";
        for split in 0..data.len() {
            let mut r = DataReader::bdat(1 << 20);
            let mut out = Vec::new();
            r.feed(&data[..split], &mut out);
            r.feed(&data[split..], &mut out);
            r.finish();
            assert_eq!(r.violation(), None);
            assert_eq!(out, b"Subject: x\n\n.not stuffed\nline\n", "split {split}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(0u8), Just(b'a')],
            0..200,
        )
    }

    proptest! {
        /// DATA ends only at CRLF "." CRLF (or "." CRLF as the very first line), whatever
        /// comes before; the stored form never holds a CR; chunking does not matter.
        #[test]
        fn data_ends_only_at_crlf_dot_crlf(data in bytes(), split in 0usize..200) {
            let mut whole = DataReader::data(1 << 20);
            let mut out = Vec::new();
            let used = whole.feed(&data, &mut out);
            if whole.done() {
                let consumed = &data[..used];
                prop_assert!(consumed == b".\r\n" || consumed.ends_with(b"\r\n.\r\n"), "{:?}", consumed);
            } else {
                prop_assert_eq!(used, data.len());
            }
            if whole.violation().is_none() {
                prop_assert!(!out.contains(&b'\r') && !out.contains(&0));
            }
            let split = split.min(used);
            let mut parts = DataReader::data(1 << 20);
            let mut out2 = Vec::new();
            let first = parts.feed(&data[..split], &mut out2);
            prop_assert_eq!(first, split);
            parts.feed(&data[split..used], &mut out2);
            prop_assert_eq!(parts.done(), whole.done());
            prop_assert_eq!(parts.violation(), whole.violation());
            if whole.violation().is_none() {
                prop_assert_eq!(out2, out);
            }
        }

        /// Any command line: smtp-proto's parser and our reply mapping never panic.
        #[test]
        fn command_parsing_is_total(line in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = smtp_proto::Request::parse(&mut line.iter());
        }
    }
}
