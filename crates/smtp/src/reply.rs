//! Server replies: read line by line with limits (a hostile or broken server cannot
//! make us buffer without bound), then parsed by smtp-proto.

use std::fmt;

use smtp_proto::response::parser::ResponseReceiver;

/// Longest reply line we accept (RFC 5321 says 512; real servers exceed it a little).
pub const MAX_LINE: usize = 4096;
/// Most lines in one reply (EHLO replies have a line per extension).
pub const MAX_LINES: usize = 128;

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit code.
    pub code: u16,
    /// Enhanced status code (RFC 3463), `[0, 0, 0]` when the server sent none.
    pub esc: [u8; 3],
    /// The text, lines joined by spaces.
    pub text: String,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 3xx.
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }
    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
    /// The enhanced status as text, or a default for the reply's class.
    pub fn status(&self) -> String {
        if self.esc[0] != 0 {
            format!("{}.{}.{}", self.esc[0], self.esc[1], self.esc[2])
        } else if self.is_permanent() {
            "5.0.0".into()
        } else if self.is_positive() {
            "2.0.0".into()
        } else {
            "4.0.0".into()
        }
    }

    /// Parse the raw bytes of one complete reply (all its lines).
    pub fn parse(raw: &[u8]) -> Option<Reply> {
        let mut receiver = ResponseReceiver::default();
        let r = receiver.parse(&mut raw.iter()).ok()?;
        let text = r
            .message
            .split(['\r', '\n'])
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Some(Reply {
            code: r.code,
            esc: r.esc,
            text,
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if self.esc[0] != 0 {
            write!(f, " {}.{}.{}", self.esc[0], self.esc[1], self.esc[2])?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// Where we are in collecting one reply's lines.
#[derive(Debug, Default)]
pub(crate) struct ReplyLines {
    raw: Vec<u8>,
    lines: usize,
}

/// What a line did to the reply being collected.
pub(crate) enum LineResult {
    More,
    Done(Vec<u8>),
}

impl ReplyLines {
    /// Add one line (with its line end). Errors name what was wrong.
    pub(crate) fn push(&mut self, line: &[u8]) -> Result<LineResult, &'static str> {
        if line.len() > MAX_LINE {
            return Err("reply line too long");
        }
        self.lines += 1;
        if self.lines > MAX_LINES {
            return Err("reply has too many lines");
        }
        if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
            // "250\r\n" (no text) is legal too.
            if line.len() >= 3 && line[..3].iter().all(u8::is_ascii_digit) {
                self.raw.extend_from_slice(line);
                return Ok(LineResult::Done(std::mem::take(&mut self.raw)));
            }
            return Err("malformed reply line");
        }
        if let Some(first) = self.raw.get(..3)
            && first != &line[..3]
        {
            return Err("reply lines with different codes");
        }
        self.raw.extend_from_slice(line);
        match line[3] {
            b'-' => Ok(LineResult::More),
            _ => Ok(LineResult::Done(std::mem::take(&mut self.raw))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_multi_line() {
        let r = Reply::parse(b"250 2.1.0 Ok\r\n").unwrap();
        assert_eq!(
            (r.code, r.status().as_str(), r.text.as_str()),
            (250, "2.1.0", "Ok")
        );
        let r = Reply::parse(b"451-4.3.0 first\r\n451 4.3.0 second\r\n").unwrap();
        assert_eq!(r.code, 451);
        assert_eq!(r.to_string(), "451 4.3.0 first second");
        let r = Reply::parse(b"550 no such user\r\n").unwrap();
        assert_eq!(r.status(), "5.0.0");
    }

    #[test]
    fn line_collection_limits() {
        let mut l = ReplyLines::default();
        assert!(matches!(l.push(b"250-a\r\n"), Ok(LineResult::More)));
        assert!(matches!(l.push(b"250 b\r\n"), Ok(LineResult::Done(_))));
        assert!(l.push(&[b'x'; MAX_LINE + 1]).is_err());
        let mut l = ReplyLines::default();
        assert!(l.push(b"250-a\r\n").is_ok());
        assert!(l.push(b"354 b\r\n").is_err());
        assert!(ReplyLines::default().push(b"hello\r\n").is_err());
    }
}
