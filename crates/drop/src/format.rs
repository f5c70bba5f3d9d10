//! The drop file: a short envelope, an empty line, then the message as submitted (line
//! ends made LF, a sendmail `.` line already applied).
//!
//! ```text
//! mailspool-drop 1
//! uid 1001
//! login alice                     (optional, informational: the pickup looks it up)
//! from alice@example.org          (optional; "from" alone is the null sender)
//! full-name Alice Liddell         (optional)
//! rcpt bob@example.org            (zero or more: recipients given as arguments)
//! extract                         (optional: -t, recipients from the headers too)
//!
//! Subject: ...
//! ```
//!
//! The pickup trusts none of it: the uid must be the file's owner, every address is
//! checked again, and the message goes through the same intake as any other.

use std::io::{self, BufRead, Write};

/// First line of every drop file.
pub const MAGIC: &str = "mailspool-drop 1";
/// Longest envelope the pickup reads.
pub const MAX_ENVELOPE: usize = 256 * 1024;

/// Who submitted a dropped message, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The submitter's real uid (the file's owner must agree).
    pub uid: u32,
    /// The submitter's login, as the drop looked it up (the pickup looks again).
    pub login: String,
    /// `-f`: the envelope sender; `Some("")` is the null sender.
    pub from: Option<String>,
    /// `-F`: a full name for a From header that is added.
    pub full_name: Option<String>,
    /// Recipients given as arguments.
    pub rcpts: Vec<String>,
    /// `-t`: recipients from To, Cc and Bcc too.
    pub extract: bool,
}

/// A drop file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading failed.
    #[error("cannot read the drop file: {0}")]
    Io(#[from] io::Error),
    /// Not a drop file, or a damaged one.
    #[error("malformed drop file: {0}")]
    Malformed(String),
}

fn one_line(value: &str) -> io::Result<&str> {
    if value.chars().any(|c| c.is_control()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "control character in an envelope field",
        ));
    }
    Ok(value)
}

impl Envelope {
    /// Write the envelope and the empty line that ends it.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut text = format!(
            "{MAGIC}\nuid {}\nlogin {}\n",
            self.uid,
            one_line(&self.login)?
        );
        if let Some(f) = &self.from {
            if f.is_empty() {
                text.push_str("from\n");
            } else {
                text.push_str(&format!("from {}\n", one_line(f)?));
            }
        }
        if let Some(n) = &self.full_name {
            text.push_str(&format!("full-name {}\n", one_line(n)?));
        }
        for r in &self.rcpts {
            text.push_str(&format!("rcpt {}\n", one_line(r)?));
        }
        if self.extract {
            text.push_str("extract\n");
        }
        text.push('\n');
        out.write_all(text.as_bytes())
    }

    /// Read an envelope, leaving `input` at the first byte of the message.
    pub fn read_from(input: &mut impl BufRead) -> Result<Envelope, FormatError> {
        let bad = |what: &str| FormatError::Malformed(what.to_owned());
        let mut env = Envelope::default();
        let mut used = 0usize;
        let mut first = true;
        let mut saw_uid = false;
        loop {
            let mut line = Vec::new();
            let n = mailspool_message::read_line_limited(input, &mut line, MAX_ENVELOPE - used)?;
            used += n;
            if n == 0 || !line.ends_with(b"\n") {
                return Err(bad("the envelope does not end"));
            }
            line.pop();
            let line = String::from_utf8(line).map_err(|_| bad("the envelope is not UTF-8"))?;
            if first {
                if line != MAGIC {
                    return Err(bad("not a drop file"));
                }
                first = false;
                continue;
            }
            if line.is_empty() {
                break;
            }
            if line.chars().any(|c| c.is_control()) {
                return Err(bad("control character in the envelope"));
            }
            let (key, value) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            match key {
                "uid" => {
                    env.uid = value.parse().map_err(|_| bad("bad uid"))?;
                    saw_uid = true;
                }
                "login" => env.login = value.to_owned(),
                "from" => env.from = Some(value.to_owned()),
                "full-name" => env.full_name = Some(value.to_owned()),
                "rcpt" if !value.is_empty() => env.rcpts.push(value.to_owned()),
                "extract" => env.extract = true,
                _ => return Err(bad(&format!("unknown envelope line {key:?}"))),
            }
        }
        if !saw_uid {
            return Err(bad("no uid"));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let env = Envelope {
            uid: 1001,
            login: "alice".into(),
            from: Some(String::new()),
            full_name: Some("Alice L".into()),
            rcpts: vec!["bob@example.org".into(), "\"odd name\"@x.org".into()],
            extract: true,
        };
        let mut buf = Vec::new();
        env.write_to(&mut buf).unwrap();
        buf.extend_from_slice(b"Subject: hi\n\nbody\n");
        let mut input = &buf[..];
        assert_eq!(Envelope::read_from(&mut input).unwrap(), env);
        assert_eq!(input, b"Subject: hi\n\nbody\n");

        let forged = Envelope {
            full_name: Some("x\nrcpt evil@x.org".into()),
            ..env.clone()
        };
        assert!(
            forged.write_to(&mut Vec::new()).is_err(),
            "no line injection"
        );
        for bad in [
            &b"Subject: not a drop\n\n"[..],
            b"mailspool-drop 1\nlogin a\n\n",
            b"mailspool-drop 1\nuid x\n\n",
            b"mailspool-drop 1\nuid 1\nbogus 1\n\n",
            b"mailspool-drop 1\nuid 1\n",
        ] {
            assert!(Envelope::read_from(&mut &bad[..]).is_err(), "{bad:?}");
        }
    }
}
