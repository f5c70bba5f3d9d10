//! A stored message as the wire will carry it: small ones read once and encoded for
//! every attempt, big ones scanned for their size and header facts and streamed.

use std::sync::Arc;

use mailspool_smtp::body::{DataEncoder, WireSize};
use mailspool_smtp::{Envelope, Session, SmtpError};

/// Messages up to this size are read once into memory for the whole delivery.
pub(super) const SMALL_MESSAGE: u64 = 256 * 1024;

/// What a delivery needs to know of a stored message before MAIL.
pub(super) struct MessageInfo {
    /// Size on the wire, CRLF line ends (SIZE=).
    pub(super) wire: u64,
    /// Bytes sent with stuffing (the usage log's `Sent`).
    pub(super) sent_bytes: u64,
    /// 8-bit bytes anywhere (BODY=8BITMIME).
    pub(super) eight_bit: bool,
    /// 8-bit bytes in the header block (SMTPUTF8 when offered).
    pub(super) utf8_headers: bool,
    /// A small message's DATA, encoded once for every attempt.
    pub(super) encoded: Option<Arc<Vec<u8>>>,
    /// A field sent before a big message's stored bytes (its DKIM signature).
    pub(super) prefix: Option<Vec<u8>>,
}

/// Read all of a node through its open descriptor (pread: the offset is untouched).
pub(super) fn read_all_at(file: &std::fs::File, size: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut data = Vec::with_capacity(size as usize);
    // Read straight into the spare capacity: no zeroing of a buffer about to be filled.
    let mut got = 0usize;
    loop {
        let spare = data.spare_capacity_mut();
        if spare.is_empty() {
            break;
        }
        // SAFETY: u8 has no invalid bit patterns, and only the bytes pread reports
        // written are counted as initialised below.
        let buf = unsafe { &mut *(spare as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
        match file.read_at(buf, got as u64)? {
            0 => break,
            n => {
                got += n;
                // SAFETY: pread wrote n more bytes after the `got` already there.
                unsafe { data.set_len(got) };
            }
        }
    }
    Ok(data)
}

/// Where a stored message's header block ends: the first empty line.
#[derive(Default)]
struct HeaderEnd {
    done: bool,
    at_line_start: bool,
    non_ascii: bool,
}

impl HeaderEnd {
    fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.done {
                return;
            }
            match b {
                b'\n' if self.at_line_start => self.done = true,
                b'\n' => self.at_line_start = true,
                b'\r' => {}
                _ => {
                    self.at_line_start = false;
                    self.non_ascii |= !b.is_ascii();
                }
            }
        }
    }
}

/// Measure a message through its descriptor. A small one is read once, here (a pread
/// of at most 256 KiB from the page cache; a hop to the blocking pool would cost more
/// than the read, and a blocking thread and its malloc arena per delivery under load),
/// and encoded once as DATA for every attempt; a big one is scanned in 64 KiB chunks
/// on the blocking pool (memory does not grow with its size) and streamed later.
/// `prefix` (a signature field, CRLF line ends) goes before the stored bytes.
pub(super) async fn scan_big_message(
    file: &std::fs::File,
    prefix: Option<Vec<u8>>,
) -> std::io::Result<MessageInfo> {
    let file = file.try_clone()?;
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut wire = WireSize::default();
        let mut head = HeaderEnd {
            at_line_start: true,
            ..Default::default()
        };
        let mut eight_bit = false;
        if let Some(p) = &prefix {
            wire.feed(p);
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        loop {
            let n = file.read_at(&mut buf, at)?;
            if n == 0 {
                break;
            }
            at += n as u64;
            wire.feed(&buf[..n]);
            head.feed(&buf[..n]);
            eight_bit |= !buf[..n].is_ascii();
        }
        wire.finish();
        Ok(MessageInfo {
            wire: wire.crlf,
            sent_bytes: wire.crlf + wire.stuffed,
            eight_bit,
            utf8_headers: head.non_ascii,
            encoded: None,
            prefix,
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Encode a whole message (after `prefix`, a signature field) as DATA and measure it
/// from the result.
pub(super) fn encode_small(prefix: Option<&[u8]>, data: &[u8]) -> MessageInfo {
    let mut enc = DataEncoder::default();
    let extra = prefix.map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(extra + data.len() + data.len() / 32 + 8);
    if let Some(p) = prefix {
        enc.feed(p, &mut out);
    }
    enc.feed(data, &mut out);
    enc.finish(&mut out);
    let sent_bytes = out.len() as u64 - 3; // without the final ".\r\n"
    let mut head = HeaderEnd {
        at_line_start: true,
        ..Default::default()
    };
    head.feed(data);
    MessageInfo {
        wire: sent_bytes - enc.stuffed(),
        sent_bytes,
        eight_bit: !data.is_ascii(),
        utf8_headers: head.non_ascii,
        encoded: Some(Arc::new(out)),
        prefix: None,
    }
}

/// Send one transaction: the encoded DATA of a small message, or a big one streamed
/// from the node's descriptor from its start.
pub(super) async fn transmit(
    session: &mut Session,
    env: &Envelope,
    info: &MessageInfo,
    file: &std::fs::File,
) -> Result<mailspool_smtp::TxOutcome, SmtpError> {
    match &info.encoded {
        Some(data) => session.send_encoded(env, data).await,
        None => {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let mut f = tokio::fs::File::from_std(file.try_clone().map_err(SmtpError::Source)?);
            f.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(SmtpError::Source)?;
            let prefix = std::io::Cursor::new(info.prefix.clone().unwrap_or_default());
            session.send(env, &mut prefix.chain(f)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoding small messages up front measures them as the streaming count does.
    #[test]
    fn small_and_streamed_measures_agree() {
        for text in [
            &b""[..],
            b"\n",
            b".",
            b"Subject: x\n\nbody\n",
            b"Subject: caf\xc3\xa9\n\n.dot\n..two\nend",
            b"A: b\nC: d\n\n\xff\n",
            b"\n\nbody only\n",
            b"no header end\n.still",
            b"bare\rcr and crlf\r\n.x\r\n",
        ] {
            let small = encode_small(None, text);
            let mut wire = WireSize::default();
            for chunk in text.chunks(3) {
                wire.feed(chunk);
            }
            wire.finish();
            assert_eq!(
                (small.wire, small.sent_bytes),
                (wire.crlf, wire.crlf + wire.stuffed),
                "{:?}",
                String::from_utf8_lossy(text)
            );
            let data = small.encoded.unwrap();
            assert!(data.ends_with(b".\r\n"));
            // What the receiver gets back is the message, line ends made LF.
            let mut want = Vec::new();
            let mut i = 0;
            while i < text.len() {
                match (text[i], text.get(i + 1)) {
                    (b'\r', Some(b'\n')) => {
                        want.push(b'\n');
                        i += 2;
                        continue;
                    }
                    (b'\r', _) => want.push(b'\n'),
                    (b, _) => want.push(b),
                }
                i += 1;
            }
            if !want.is_empty() && !want.ends_with(b"\n") {
                want.push(b'\n');
            }
            assert_eq!(mailspool_smtp::body::unstuff(&data), want, "{text:?}");
        }
    }
}
