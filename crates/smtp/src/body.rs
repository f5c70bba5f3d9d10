//! A stored message (LF line ends) as SMTP DATA: every line end becomes CRLF (a bare CR
//! too, so we never emit a lone CR that a receiver could read differently), a line that
//! starts with `.` gets a second one, and the data ends with `CRLF.CRLF`. Fixed memory.

/// Incremental encoder; feed chunks, then [`DataEncoder::finish`].
#[derive(Debug)]
pub struct DataEncoder {
    line_start: bool,
    cr: bool,
    empty: bool,
    stuffed: u64,
}

impl Default for DataEncoder {
    fn default() -> Self {
        DataEncoder {
            line_start: true,
            cr: false,
            empty: true,
            stuffed: 0,
        }
    }
}

/// Where the encoder puts its output: bytes, or only their count.
trait Output {
    /// Bytes of the message itself (CRLF line ends included).
    fn bytes(&mut self, b: &[u8]);
    /// The dot that stuffing adds before a line that starts with one.
    fn stuffing_dot(&mut self);
}

impl Output for Vec<u8> {
    fn bytes(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn stuffing_dot(&mut self) {
        self.push(b'.');
    }
}

impl DataEncoder {
    /// Encode `input`, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 4);
        if self.cr || input.contains(&b'\r') {
            self.encode(input, out);
            return;
        }
        // Stored messages have LF line ends only: copy whole lines, not bytes.
        let mut rest = input;
        while let Some(&first) = rest.first() {
            self.empty = false;
            if self.line_start && first == b'.' {
                out.push(b'.');
                self.stuffed += 1;
            }
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    out.extend_from_slice(&rest[..i]);
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                    rest = &rest[i + 1..];
                }
                None => {
                    out.extend_from_slice(rest);
                    self.line_start = false;
                    rest = &[];
                }
            }
        }
    }

    /// Dots added by stuffing so far.
    pub fn stuffed(&self) -> u64 {
        self.stuffed
    }

    fn encode(&mut self, input: &[u8], out: &mut impl Output) {
        for &b in input {
            self.empty = false;
            if self.cr {
                self.cr = false;
                out.bytes(b"\r\n");
                self.line_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.cr = true,
                b'\n' => {
                    out.bytes(b"\r\n");
                    self.line_start = true;
                }
                _ => {
                    if self.line_start && b == b'.' {
                        out.stuffing_dot();
                        self.stuffed += 1;
                    }
                    out.bytes(&[b]);
                    self.line_start = false;
                }
            }
        }
    }

    /// End the data: close an unterminated last line, then `.CRLF`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.close_last_line(out);
        out.extend_from_slice(b".\r\n");
    }

    fn close_last_line(&mut self, out: &mut impl Output) {
        if self.cr {
            self.cr = false;
            out.bytes(b"\r\n");
            self.line_start = true;
        }
        if !self.line_start && !self.empty {
            out.bytes(b"\r\n");
            self.line_start = true;
        }
    }
}

/// Measures a stored message as it will go on the wire, without building it: the size
/// with CRLF line ends (what SIZE= declares, RFC 1870: no stuffing, no final dot) and the
/// dots stuffing adds (Mail::Spool 0.50 counted those in its usage log).
#[derive(Debug, Default)]
pub struct WireSize {
    enc: DataEncoder,
    count: Count,
    /// Bytes with CRLF line ends, the last line closed.
    pub crlf: u64,
    /// Dots added by stuffing.
    pub stuffed: u64,
}

#[derive(Debug, Default)]
struct Count {
    bytes: u64,
    dots: u64,
}

impl Output for Count {
    fn bytes(&mut self, b: &[u8]) {
        self.bytes += b.len() as u64;
    }
    fn stuffing_dot(&mut self) {
        self.dots += 1;
    }
}

impl WireSize {
    /// Count `input`.
    pub fn feed(&mut self, input: &[u8]) {
        self.enc.encode(input, &mut self.count);
        (self.crlf, self.stuffed) = (self.count.bytes, self.count.dots);
    }

    /// Close an unterminated last line, as [`DataEncoder::finish`] does.
    pub fn finish(&mut self) {
        self.enc.close_last_line(&mut self.count);
        (self.crlf, self.stuffed) = (self.count.bytes, self.count.dots);
    }
}

/// A stored message as the receiver reads it after DATA: CRLF line ends (a bare CR
/// made one, as [`DataEncoder`] does), no stuffing. What a DKIM signature covers.
#[derive(Debug, Default)]
pub struct WireText {
    enc: DataEncoder,
}

/// Bytes without the stuffing dots.
struct Unstuffed<'a>(&'a mut Vec<u8>);

impl Output for Unstuffed<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn stuffing_dot(&mut self) {}
}

impl WireText {
    /// Convert `input`, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 2);
        if self.enc.cr || input.contains(&b'\r') {
            self.enc.encode(input, &mut Unstuffed(out));
            return;
        }
        // Stored messages have LF line ends only: copy whole lines, not bytes.
        let mut rest = input;
        while !rest.is_empty() {
            self.enc.empty = false;
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    out.extend_from_slice(&rest[..i]);
                    out.extend_from_slice(b"\r\n");
                    self.enc.line_start = true;
                    rest = &rest[i + 1..];
                }
                None => {
                    out.extend_from_slice(rest);
                    self.enc.line_start = false;
                    rest = &[];
                }
            }
        }
    }

    /// Close an unterminated last line.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.enc.close_last_line(&mut Unstuffed(out));
    }
}

/// Decode SMTP DATA (without the final `.CRLF`) back to stored form; for tests.
pub fn unstuff(data: &[u8]) -> Vec<u8> {
    let text = data.strip_suffix(b".\r\n").unwrap_or(data);
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_prefix(b".").unwrap_or(line);
        match line.strip_suffix(b"\r\n") {
            Some(l) => {
                out.extend_from_slice(l);
                out.push(b'\n');
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(input: &[u8]) -> Vec<u8> {
        let mut e = DataEncoder::default();
        let mut out = Vec::new();
        e.feed(input, &mut out);
        e.finish(&mut out);
        out
    }

    #[test]
    fn crlf_dots_and_termination() {
        assert_eq!(encode(b"a\n.b\n..\n.\n"), b"a\r\n..b\r\n...\r\n..\r\n.\r\n");
        assert_eq!(encode(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(encode(b""), b".\r\n");
        assert_eq!(encode(b"bare\rcr\n"), b"bare\r\ncr\r\n.\r\n");
        assert_eq!(encode(b"crlf\r\n"), b"crlf\r\n.\r\n");
        // Only CRLF.CRLF can end it: a "." after a bare CR is stuffed too.
        assert_eq!(encode(b"x\r.\r\n"), b"x\r\n..\r\n.\r\n");
    }

    #[test]
    fn wire_size_matches_the_encoder() {
        for input in [
            &b"a\n.b\n..\n.\n"[..],
            b"no newline",
            b"",
            b"bare\rcr\n",
            b"crlf\r\n",
            b"x\r.\r\n",
            b"Subject: x\n\n.leading\nmid.dle\n..two\nend",
        ] {
            let out = encode(input);
            let mut w = WireSize::default();
            for chunk in input.chunks(3) {
                w.feed(chunk);
            }
            w.finish();
            let body = out.len() as u64 - 3; // without ".\r\n"
            assert_eq!(w.crlf + w.stuffed, body, "{input:?}");
            assert_eq!(
                w.crlf,
                unstuff(&out).len() as u64
                    + (unstuff(&out).iter().filter(|&&b| b == b'\n').count() as u64),
                "{input:?}"
            );
        }
    }

    #[test]
    fn chunking_does_not_matter_and_unstuff_inverts() {
        let input = b"Subject: x\n\n.leading\nmid.dle\n..two\nend";
        let whole = encode(input);
        for split in 0..input.len() {
            let mut e = DataEncoder::default();
            let mut out = Vec::new();
            e.feed(&input[..split], &mut out);
            e.feed(&input[split..], &mut out);
            e.finish(&mut out);
            assert_eq!(out, whole, "split at {split}");
        }
        assert_eq!(
            unstuff(&whole),
            b"Subject: x\n\n.leading\nmid.dle\n..two\nend\n"
        );
    }
}
