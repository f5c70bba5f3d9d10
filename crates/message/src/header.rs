//! The header block of a message being handed in: read line by line with a size limit,
//! kept as raw fields (folding preserved, line ends made LF) so that the stored message
//! is the submitted one minus Bcc plus the headers we add.
//!
//! Like sendmail, a first line that is not a header (or a continuation of one) starts
//! the body; we then insert the empty line that separates header and body.

use std::io::{self, BufRead};

use crate::address::{AddressError, dedup_key, parse_address_list_in};
use crate::{IntakeError, read_line_limited};

/// One header field as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field name as written (compare with `eq_ignore_ascii_case`).
    pub name: String,
    /// The whole field, `Name: value` with its continuation lines, each ending in LF.
    pub raw: Vec<u8>,
}

impl Field {
    /// The unfolded value after the colon, as text (invalid UTF-8 replaced).
    pub fn value(&self) -> String {
        let text = String::from_utf8_lossy(&self.raw);
        let value = text.split_once(':').map_or("", |(_, v)| v);
        value
            .replace("\r\n", "")
            .replace('\n', "")
            .trim()
            .to_owned()
    }
}

/// The header block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Fields in submitted order.
    pub fields: Vec<Field>,
}

/// What reading the head of a message found.
#[derive(Debug)]
pub struct Head {
    /// The header fields.
    pub headers: Headers,
    /// Body bytes already read (a first body line that was not separated by an empty
    /// line), to be copied before the rest.
    pub body_start: Vec<u8>,
    /// The message ended inside the head (end of input, or a `.` line without `-i`).
    pub ended: bool,
}

fn is_field_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b) && b != b':')
}

/// A line without its line end: the LF and every CR before it.
fn strip_eol(line: &[u8]) -> &[u8] {
    match line.strip_suffix(b"\n") {
        Some(mut l) => {
            while let Some(rest) = l.strip_suffix(b"\r") {
                l = rest;
            }
            l
        }
        None => line,
    }
}

/// Read the header block: up to `max_bytes` bytes. `dot_ends` makes a line holding
/// only `.` end the message (sendmail without `-i`).
pub fn read_head<R: BufRead>(
    input: &mut R,
    max_bytes: usize,
    dot_ends: bool,
) -> Result<Head, IntakeError> {
    let mut headers = Headers::default();
    let mut line = Vec::new();
    let mut used = 0usize;
    let mut line_no = 0usize;
    loop {
        line.clear();
        let n = read_line_limited(input, &mut line, max_bytes.saturating_sub(used) + 1)
            .map_err(IntakeError::Read)?;
        used += n;
        line_no += 1;
        if n == 0 {
            return Ok(Head {
                headers,
                body_start: Vec::new(),
                ended: true,
            });
        }
        if used > max_bytes {
            return Err(IntakeError::HeaderTooLarge { limit: max_bytes });
        }
        let content = strip_eol(&line);
        if dot_ends && content == b"." {
            return Ok(Head {
                headers,
                body_start: Vec::new(),
                ended: true,
            });
        }
        if content.is_empty() {
            return Ok(Head {
                headers,
                body_start: Vec::new(),
                ended: false,
            });
        }
        if content.contains(&0) {
            return Err(IntakeError::NulInHeader { line: line_no });
        }
        let continuation = matches!(content[0], b' ' | b'\t');
        if continuation && let Some(last) = headers.fields.last_mut() {
            last.raw.extend_from_slice(content);
            last.raw.push(b'\n');
            continue;
        }
        // RFC 5322 4.5.3 (obsolete syntax, still sent): white space may come between a
        // field name and its colon, `Subject : hi`. It is a header, not the body.
        let name = content.split(|&b| b == b':').next().unwrap_or_default();
        let name = name.trim_ascii_end();
        if continuation || !content.contains(&b':') || !is_field_name(name) {
            // Not a header: the body starts here. Keep the line as it was read; the body
            // copier normalises its line end.
            return Ok(Head {
                headers,
                body_start: std::mem::take(&mut line),
                ended: false,
            });
        }
        let mut raw = content.to_vec();
        raw.push(b'\n');
        headers.fields.push(Field {
            name: String::from_utf8_lossy(name).into_owned(),
            raw,
        });
    }
}

impl Headers {
    /// Whether a field of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.fields
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// Unfolded values of every field of this name.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = String> + 'a {
        self.fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name))
            .map(Field::value)
    }

    /// Remove every field of this name.
    pub fn remove(&mut self, name: &str) {
        self.fields.retain(|f| !f.name.eq_ignore_ascii_case(name));
    }

    /// Put a field first (a trace field: the newest comes first). The value must not
    /// contain line breaks.
    pub fn prepend(&mut self, name: &str, value: &str) {
        debug_assert!(!value.contains(['\r', '\n']));
        self.fields.insert(
            0,
            Field {
                name: name.to_owned(),
                raw: format!("{name}: {value}\n").into_bytes(),
            },
        );
    }

    /// Append a field. The value must not contain line breaks.
    pub fn push(&mut self, name: &str, value: &str) {
        debug_assert!(!value.contains(['\r', '\n']));
        self.fields.push(Field {
            name: name.to_owned(),
            raw: format!("{name}: {value}\n").into_bytes(),
        });
    }

    /// Recipients from To, Cc and Bcc, in order, without duplicates.
    pub fn recipients(&self) -> Result<Vec<String>, AddressError> {
        self.recipients_in(None)
    }

    /// [`Headers::recipients`], bare local parts (`To: root`) qualified with `qualify`.
    pub fn recipients_in(&self, qualify: Option<&str>) -> Result<Vec<String>, AddressError> {
        let mut out = Vec::new();
        for name in ["To", "Cc", "Bcc"] {
            for value in self.values(name) {
                out.extend(parse_address_list_in(&value, qualify)?);
            }
        }
        Ok(dedup(out))
    }

    /// The first address of the first From field; `None` when there is no From.
    /// `From: <>` gives `Some("")`: the null sender.
    pub fn from_address(&self) -> Result<Option<String>, AddressError> {
        self.from_address_in(None)
    }

    /// [`Headers::from_address`], a bare local part (`From: root`) qualified.
    pub fn from_address_in(&self, qualify: Option<&str>) -> Result<Option<String>, AddressError> {
        let Some(value) = self.values("From").next() else {
            return Ok(None);
        };
        if value.trim() == "<>" {
            return Ok(Some(String::new()));
        }
        Ok(parse_address_list_in(&value, qualify)?.into_iter().next())
    }

    /// Size of the block as written by [`Headers::write_to`].
    pub fn len(&self) -> usize {
        self.fields.iter().map(|f| f.raw.len()).sum()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Write the fields (LF line ends), without the separating empty line.
    pub fn write_to(&self, out: &mut impl io::Write) -> io::Result<()> {
        for f in &self.fields {
            out.write_all(&f.raw)?;
        }
        Ok(())
    }
}

/// Remove duplicate addresses (domain compared without case), keeping the first.
pub fn dedup(addrs: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    addrs
        .into_iter()
        .filter(|a| seen.insert(dedup_key(a)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, dot_ends: bool) -> Head {
        read_head(&mut text.as_bytes(), 10_000, dot_ends).unwrap()
    }

    #[test]
    fn fields_folding_and_line_ends() {
        let h = head(
            "From: a@b.c\r\nTo: x@y.z,\r\n  w@y.z\r\nSubject: hi\r\n\r\nbody\r\n",
            true,
        );
        assert_eq!(h.headers.fields.len(), 3);
        assert_eq!(h.headers.fields[1].raw, b"To: x@y.z,\n  w@y.z\n");
        assert_eq!(h.headers.recipients().unwrap(), ["x@y.z", "w@y.z"]);
        assert!(!h.ended);
        assert!(h.body_start.is_empty());
    }

    #[test]
    fn first_non_header_line_starts_the_body() {
        let h = head("Subject: x\nthis is body\nmore\n", true);
        assert_eq!(h.headers.fields.len(), 1);
        assert_eq!(h.body_start, b"this is body\n");
        let h = head("hello world\n", true);
        assert!(h.headers.is_empty());
        assert_eq!(h.body_start, b"hello world\n");
        let h = head(" leading space\n", true);
        assert_eq!(h.body_start, b" leading space\n");
    }

    #[test]
    fn dot_line_ends_unless_ignored() {
        assert!(head("Subject: x\n.\nnot read\n", true).ended);
        let h = head("Subject: x\n.\n", false);
        assert!(!h.ended);
        assert_eq!(h.body_start, b".\n");
    }

    #[test]
    fn limits_and_nul() {
        let big = format!("Subject: {}\n\n", "x".repeat(20_000));
        assert!(matches!(
            read_head(&mut big.as_bytes(), 10_000, true),
            Err(IntakeError::HeaderTooLarge { .. })
        ));
        assert!(matches!(
            read_head(&mut "A: b\nSubject: x\0y\n\n".as_bytes(), 10_000, true),
            Err(IntakeError::NulInHeader { line: 2 })
        ));
    }

    #[test]
    fn recipients_from_to_cc_bcc_deduplicated() {
        let h = head(
            "To: A <a@x.com>, b@y.com\nCc: a@X.COM, c@z.com\nBcc: hidden@w.com, b@y.com\n\n",
            true,
        );
        assert_eq!(
            h.headers.recipients().unwrap(),
            ["a@x.com", "b@y.com", "c@z.com", "hidden@w.com"]
        );
    }

    #[test]
    fn from_address() {
        let h = head(
            "Received: from a by b id (abc123DEF) ; d\nFrom: \"Me\" <me@here.org>\n\n",
            true,
        );
        assert_eq!(
            h.headers.from_address().unwrap().as_deref(),
            Some("me@here.org")
        );
        let h = head("From: <>\nReceived: by x; paid (x)\n\n", true);
        assert_eq!(h.headers.from_address().unwrap().as_deref(), Some(""));
    }

    #[test]
    fn obsolete_space_before_the_colon_is_still_a_header() {
        let h = head(
            "Subject : hello\nFrom\t: Me <me@here.org>\nTo : you@there.org\n\nbody\n",
            true,
        );
        assert_eq!(h.headers.fields.len(), 3, "{:?}", h.headers);
        assert_eq!(h.headers.fields[0].name, "Subject");
        assert_eq!(h.headers.fields[0].value(), "hello");
        assert_eq!(
            h.headers.from_address().unwrap().as_deref(),
            Some("me@here.org")
        );
        assert_eq!(h.headers.recipients().unwrap(), ["you@there.org"]);
        assert!(h.body_start.is_empty());
        // A body line with words before a colon is not a header.
        let h = head("Subject: x\nDear friend: hello\n", true);
        assert_eq!(h.body_start, b"Dear friend: hello\n");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes at all: reading a head never panics, stays within its limit, and
        /// what it keeps as fields holds no NUL.
        #[test]
        fn read_head_is_total(data in proptest::collection::vec(any::<u8>(), 0..2048), dot in any::<bool>()) {
            if let Ok(head) = read_head(&mut &data[..], 1024, dot) {
                prop_assert!(head.headers.len() <= 1024 + head.headers.fields.len());
                prop_assert!(head.headers.fields.iter().all(|f| !f.raw.contains(&0)));
                let _ = head.headers.recipients();
                let _ = head.headers.from_address();
            }
        }
    }
}
