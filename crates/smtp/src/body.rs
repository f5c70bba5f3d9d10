//! A stored message (LF line ends) as SMTP DATA: every line end becomes CRLF (a bare CR
//! too, so we never emit a lone CR that a receiver could read differently), a line that
//! starts with `.` gets a second one, and the data ends with `CRLF.CRLF`. Fixed memory.

/// Incremental encoder; feed chunks, then [`DataEncoder::finish`].
#[derive(Debug)]
pub struct DataEncoder {
    line_start: bool,
    cr: bool,
    empty: bool,
}

impl Default for DataEncoder {
    fn default() -> Self {
        DataEncoder {
            line_start: true,
            cr: false,
            empty: true,
        }
    }
}

impl DataEncoder {
    /// Encode `input`, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 4);
        for &b in input {
            self.empty = false;
            if self.cr {
                self.cr = false;
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                }
                _ => {
                    if self.line_start && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    self.line_start = false;
                }
            }
        }
    }

    /// End the data: close an unterminated last line, then `.CRLF`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.cr {
            self.cr = false;
            out.extend_from_slice(b"\r\n");
            self.line_start = true;
        }
        if !self.line_start && !self.empty {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
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
