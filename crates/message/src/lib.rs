//! Intake parsing for mailspool: what a program hands in, made into what the spool stores.
//!
//! - [`header::read_head`] reads the header block (bounded) and finds the envelope in it:
//!   recipients from To/Cc/Bcc, the sender from From (never an id: mailspool chooses
//!   those itself).
//! - [`address`] parses address lists and checks envelope addresses.
//! - [`BodyCopier`] streams the body with line ends made LF and, unless `-i`, stops at
//!   a line holding only `.`, in fixed memory whatever the message size.
//!
//! Nothing here touches the disk; the caller decides where bytes go.

pub mod address;
pub mod header;

use std::io::{self, BufRead, Write};

pub use address::{AddressError, check_address, parse_address_list, parse_sender};
pub use header::{Field, Head, Headers, read_head};

/// Why a message was refused at intake.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// Reading the input failed.
    #[error("cannot read the message: {0}")]
    Read(#[source] io::Error),
    /// Writing the output failed.
    #[error("cannot write the message: {0}")]
    Write(#[source] io::Error),
    /// The header block is over its limit.
    #[error("header block over {limit} bytes")]
    HeaderTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The message is over the size limit.
    #[error("message over the size limit of {limit} bytes (max_message_size)")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A NUL byte in a header line.
    #[error("NUL byte in header line {line}")]
    NulInHeader {
        /// 1-based line number.
        line: usize,
    },
    /// A NUL byte in the body: not allowed in mail (RFC 5322 §2.3), and a receiver may
    /// cut the message there; refused as the listener refuses it.
    #[error("NUL byte in the message body")]
    NulInBody,
    /// A malformed address.
    #[error(transparent)]
    Address(#[from] AddressError),
}

/// Whether `data` holds a bare CR: one not followed by LF. Receivers disagree on whether
/// it ends a line (the SMTP smuggling family), so the network intakes refuse it: the
/// listener with 550, the HTTP API with 400.
pub fn has_bare_cr(data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && data.get(i + 1) != Some(&b'\n'))
}

/// Append one line (through LF) to `buf`, reading at most `max` bytes. Returns the bytes
/// read; a line longer than `max` comes back cut, without its LF.
pub fn read_line_limited<R: BufRead>(
    input: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    let mut total = 0;
    while total < max {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        let room = max - total;
        let (take, done) = match chunk.iter().take(room).position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len().min(room), false),
        };
        buf.extend_from_slice(&chunk[..take]);
        input.consume(take);
        total += take;
        if done {
            break;
        }
    }
    Ok(total)
}

/// Streams a message body: CRLF becomes LF (a lone CR is kept), and with `dot_ends` a
/// line holding only `.` ends the message, as sendmail does without `-i`. State is a few
/// flags, so chunks may split lines anywhere.
#[derive(Debug)]
pub struct BodyCopier {
    dot_ends: bool,
    line_start: bool,
    crs: usize,
    dot: bool,
    ended: bool,
    out: Vec<u8>,
}

impl BodyCopier {
    /// A copier at the start of the body.
    pub fn new(dot_ends: bool) -> Self {
        BodyCopier {
            dot_ends,
            line_start: true,
            crs: 0,
            dot: false,
            ended: false,
            out: Vec::with_capacity(64 * 1024),
        }
    }

    fn emit(&mut self, c: u8) {
        if self.line_start && c == b'.' && self.dot_ends && !self.dot {
            self.dot = true;
            self.line_start = false;
            return;
        }
        if self.dot {
            self.out.push(b'.');
            self.dot = false;
        }
        self.out.push(c);
        self.line_start = false;
    }

    /// Feed bytes; returns how many were used (fewer than given when a `.` line ended
    /// the message). Converted bytes accumulate in [`BodyCopier::take_output`].
    pub fn feed(&mut self, data: &[u8]) -> usize {
        for (i, &b) in data.iter().enumerate() {
            if self.ended {
                return i;
            }
            match b {
                // Carriage returns are held until we know what follows: before a LF
                // they are part of the line end and dropped (so "\r\r\n" is stored "\n",
                // never the ambiguous "\r\n"); before anything else they are kept.
                b'\r' => self.crs += 1,
                b'\n' => {
                    self.crs = 0;
                    if self.dot {
                        self.dot = false;
                        self.ended = true;
                        return i + 1;
                    }
                    self.out.push(b'\n');
                    self.line_start = true;
                }
                _ => {
                    for _ in 0..std::mem::take(&mut self.crs) {
                        self.emit(b'\r');
                    }
                    self.emit(b);
                }
            }
        }
        data.len()
    }

    /// Flush state at end of input (a trailing lone CR or `.` without a line end).
    pub fn finish(&mut self) {
        for _ in 0..std::mem::take(&mut self.crs) {
            self.emit(b'\r');
        }
        if self.dot {
            self.dot = false;
            self.out.push(b'.');
        }
    }

    /// Whether a `.` line ended the message.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Converted bytes so far (the buffer is reused).
    pub fn take_output(&mut self) -> &[u8] {
        &self.out
    }

    /// Clear the output buffer after it was written.
    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// Copy the rest of `input` to `output`, starting with `start` (bytes already read),
    /// and refusing to write more than `limit` bytes. Returns the bytes written.
    pub fn copy<R: BufRead, W: Write>(
        mut self,
        start: &[u8],
        input: &mut R,
        output: &mut W,
        limit: u64,
    ) -> Result<u64, IntakeError> {
        let mut written = 0u64;
        let mut write = |this: &mut BodyCopier| -> Result<(), IntakeError> {
            if this.out.contains(&0) {
                return Err(IntakeError::NulInBody);
            }
            written += this.out.len() as u64;
            if written > limit {
                return Err(IntakeError::TooLarge { limit });
            }
            output.write_all(&this.out).map_err(IntakeError::Write)?;
            this.out.clear();
            Ok(())
        };
        self.feed(start);
        write(&mut self)?;
        while !self.ended {
            let chunk = match input.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(IntakeError::Read(e)),
            };
            if chunk.is_empty() {
                break;
            }
            let used = self.feed(chunk);
            input.consume(used);
            write(&mut self)?;
        }
        self.finish();
        write(&mut self)?;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn copy(data: &[u8], dot_ends: bool) -> Vec<u8> {
        let mut out = Vec::new();
        BodyCopier::new(dot_ends)
            .copy(&[], &mut &data[..], &mut out, u64::MAX)
            .unwrap();
        out
    }

    #[test]
    fn line_ends_and_dots() {
        assert_eq!(copy(b"a\r\nb\nc\rd\r\r\n", false), b"a\nb\nc\rd\n");
        assert_eq!(copy(b"a\r\n.\r\nafter\r\n", true), b"a\n");
        assert_eq!(copy(b"a\n.\n", true), b"a\n");
        assert_eq!(copy(b"a\n.\n", false), b"a\n.\n");
        assert_eq!(copy(b"..x\n.x\n. \n", true), b"..x\n.x\n. \n");
        assert_eq!(copy(b"a\n.", true), b"a\n.");
        assert_eq!(copy(b"x\r", true), b"x\r");
        assert_eq!(copy(b".\rx\n", true), b".\rx\n");
    }

    #[test]
    fn size_limit() {
        let r = BodyCopier::new(false).copy(&[], &mut &[b'x'; 100][..], &mut Vec::new(), 99);
        assert!(matches!(r, Err(IntakeError::TooLarge { limit: 99 })));
    }

    #[test]
    fn a_nul_byte_in_the_body_is_refused() {
        let r = BodyCopier::new(false).copy(&[], &mut &b"x\0y\n"[..], &mut Vec::new(), u64::MAX);
        assert!(matches!(r, Err(IntakeError::NulInBody)), "{r:?}");
    }

    #[test]
    fn long_lines_are_cut_by_read_line_limited() {
        let mut buf = Vec::new();
        let n = read_line_limited(&mut &b"abcdef\n"[..], &mut buf, 3).unwrap();
        assert_eq!((n, buf.as_slice()), (3, &b"abc"[..]));
    }

    proptest! {
        /// Chunk boundaries never change the result.
        #[test]
        fn chunking_does_not_matter(data in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')], 0..64),
            split in 0usize..64, dot_ends in any::<bool>()) {
            let whole = copy(&data, dot_ends);
            let split = split.min(data.len());
            let mut c = BodyCopier::new(dot_ends);
            let used = c.feed(&data[..split]);
            let mut out = c.take_output().to_vec();
            c.clear_output();
            if used == split && !c.ended() {
                c.feed(&data[split..]);
            }
            c.finish();
            out.extend_from_slice(c.take_output());
            prop_assert_eq!(out, whole);
        }

        /// Without dot handling, removing the CRs before each LF is the only change, and
        /// the stored form never holds CR LF.
        #[test]
        fn lf_conversion(data in proptest::collection::vec(1u8.., 0..200)) {
            // Every run of CRs right before a LF goes; other CRs stay.
            let mut expect = Vec::new();
            for (i, &b) in data.iter().enumerate() {
                let before_lf = b == b'\r'
                    && data[i..].iter().find(|&&c| c != b'\r') == Some(&b'\n');
                if !before_lf {
                    expect.push(b);
                }
            }
            prop_assert_eq!(copy(&data, false), expect.clone());
            prop_assert!(!expect.windows(2).any(|w| w == b"\r\n"));
        }
    }
}
