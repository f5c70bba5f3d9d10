//! Reading a message for delivery, and DKIM-signing it once before its first attempt.

use std::sync::Arc;

use mailspool_smtp::body::WireText;
use mailspool_spool::{Store, escape};

use super::wire::{MessageInfo, SMALL_MESSAGE, encode_small, read_all_at, scan_big_message};
use super::{Claim, Engine};
use crate::config::DeliverConfig;
use crate::dkim::{Algorithm, DkimKey, choose_keys, head_facts};

/// The header block is looked for in this much of a big message (intake's
/// `max_header_size` keeps real ones far smaller).
const HEAD_SCAN: usize = 256 * 1024;

/// Chunks a big message is read in while it is signed.
const CHUNK: usize = 64 * 1024;

impl Engine {
    /// Read (a small message) or measure (a big one) what this delivery sends: the
    /// message after its DKIM signature when a key applies. Err is the temporary reply
    /// every node of the claim gets.
    pub(super) async fn prepare_message(
        &self,
        cfg: &DeliverConfig,
        claim: &Claim,
    ) -> Result<MessageInfo, String> {
        let file = &claim.file.file;
        let size = claim.file.size;
        let unreadable = |e: std::io::Error| format!("cannot read the node: {e}");
        let mut small = if size <= SMALL_MESSAGE {
            Some(read_all_at(file, size).map_err(unreadable)?)
        } else {
            None
        };
        let (ino, id) = (claim.file.ino, claim.nodes[0].0.name.id.clone());
        // This delivery has all of the message's names: no other delivery needs the
        // signature now, so it is written to the spool only if a node stays queued.
        let whole = claim.nodes.len() as u64 >= claim.file.nlink;
        let mut field = None;
        if !cfg.dkim.is_empty() {
            // Signed on an earlier attempt, for another recipient, or by another host.
            field = self.spool.dkim_signature(ino, &id);
        }
        if !cfg.dkim.is_empty() && field.is_none() {
            // Ed25519 over a small message takes microseconds: no hop to a thread.
            let inline =
                small.is_some() && cfg.dkim.iter().all(|k| k.algorithm() == Algorithm::Ed25519);
            if inline {
                field = sign_once(
                    self.spool.as_ref(),
                    &cfg.dkim,
                    ino,
                    &id,
                    file,
                    small.as_deref(),
                    !whole,
                )?;
            } else {
                let (spool, keys) = (self.spool.clone(), cfg.dkim.clone());
                let file = file.try_clone().map_err(unreadable)?;
                let data = small.take();
                let (signed, data) = tokio::task::spawn_blocking(move || {
                    let signed = sign_once(
                        spool.as_ref(),
                        &keys,
                        ino,
                        &id,
                        &file,
                        data.as_deref(),
                        !whole,
                    );
                    (signed, data)
                })
                .await
                .map_err(|e| format!("DKIM signing stopped: {e}"))?;
                small = data;
                field = signed?;
            }
            if whole && let Some(f) = &field {
                *claim
                    .unsaved_signature
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(f.clone());
            }
        }
        match small {
            Some(data) => Ok(encode_small(field.as_deref(), &data)),
            None => scan_big_message(file, field).await.map_err(unreadable),
        }
    }

    /// After a claim settles: a message whose last name is gone needs its signature
    /// no more; one with nodes still queued keeps the signature this delivery made, so
    /// that their retries send the same one.
    pub(super) fn settle_signature(
        &self,
        file: &std::fs::File,
        ino: u64,
        id: &str,
        unsaved: Option<Vec<u8>>,
    ) {
        use std::os::unix::fs::MetadataExt;
        let gone = file.metadata().is_ok_and(|m| m.nlink() == 0);
        match (gone, unsaved) {
            // Never written: nothing to remove.
            (true, Some(_)) => {}
            (true, None) => self.spool.forget_dkim_signature(ino, id),
            (false, Some(field)) => {
                if let Err(e) = self.spool.keep_dkim_signature(ino, id, &field) {
                    tracing::warn!(id = %escape(id), error = %escape(&e.to_string()), "cannot keep the DKIM signature");
                }
            }
            (false, None) => {}
        }
    }
}

/// Sign a message with the keys its From domain calls for (one field each), unless it
/// has no From, no key applies, or it is already signed for that domain; keep the signature in the
/// spool (the first one kept wins). `data` is the whole message when small.
fn sign_once(
    spool: &dyn Store,
    keys: &[Arc<DkimKey>],
    ino: u64,
    id: &str,
    file: &std::fs::File,
    data: Option<&[u8]>,
    keep: bool,
) -> Result<Option<Vec<u8>>, String> {
    use std::os::unix::fs::FileExt;
    let unreadable = |e: std::io::Error| format!("cannot read the node: {e}");
    let mut head_buf = Vec::new();
    let head = match data {
        Some(d) => d,
        None => {
            head_buf.resize(HEAD_SCAN, 0);
            let n = file.read_at(&mut head_buf, 0).map_err(unreadable)?;
            head_buf.truncate(n);
            &head_buf
        }
    };
    let facts = head_facts(head);
    let Some(from_domain) = &facts.from_domain else {
        tracing::debug!(id = %escape(id), "not DKIM-signed: no From address, or more than one From field");
        return Ok(None);
    };
    let chosen = choose_keys(keys, from_domain);
    if chosen.is_empty() {
        tracing::debug!(id = %escape(id), domain = %escape(from_domain), "not DKIM-signed: no key for the From domain");
        return Ok(None);
    }
    if facts.signed_by.contains(&chosen[0].domain) {
        tracing::debug!(id = %escape(id), domain = %escape(&chosen[0].domain), "already DKIM-signed for the domain");
        return Ok(None);
    }
    // One field per key, each over the message as sent (the others' fields are not
    // part of it: they are all added in front together).
    let mut field = Vec::new();
    for key in chosen {
        field.extend(sign_with_key(key, file, data).map_err(unreadable)??);
        tracing::debug!(id = %escape(id), domain = %key.domain, selector = %key.selector, algorithm = %key.algorithm(), event = "dkim signed", "DKIM-signed");
    }
    if !keep {
        return Ok(Some(field));
    }
    // Not kept (the disk is full, say): this delivery still goes signed.
    let kept = spool.keep_dkim_signature(ino, id, &field).unwrap_or_else(|e| {
        tracing::warn!(id = %escape(id), error = %escape(&e.to_string()), "cannot keep the DKIM signature");
        field
    });
    Ok(Some(kept))
}

/// One key's `DKIM-Signature` field over the message (`data`, or read from `file`):
/// the outer error is a read failure, the inner one the signer's.
fn sign_with_key(
    key: &DkimKey,
    file: &std::fs::File,
    data: Option<&[u8]>,
) -> Result<Result<Vec<u8>, String>, std::io::Error> {
    use std::os::unix::fs::FileExt;
    let mut failed = None;
    let field = key.sign(|write| {
        let mut wire = WireText::default();
        let mut names = FieldNames::default();
        let mut out = Vec::with_capacity(CHUNK + CHUNK / 16);
        let mut fixed = Vec::with_capacity(CHUNK + CHUNK / 16);
        let mut emit = |out: &mut Vec<u8>, fixed: &mut Vec<u8>| {
            names.feed(out, fixed);
            write(fixed);
            out.clear();
            fixed.clear();
        };
        match data {
            Some(d) => wire.feed(d, &mut out),
            None => {
                let mut buf = vec![0u8; CHUNK];
                let mut at = 0u64;
                loop {
                    match file.read_at(&mut buf, at) {
                        Ok(0) => break,
                        Ok(n) => {
                            at += n as u64;
                            wire.feed(&buf[..n], &mut out);
                            emit(&mut out, &mut fixed);
                        }
                        Err(e) => {
                            failed = Some(e);
                            return;
                        }
                    }
                }
            }
        }
        wire.finish(&mut out);
        names.feed(&out, &mut fixed);
        names.finish(&mut fixed);
        write(&fixed);
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(field)
}

/// What the signer is fed of the header block: a field written with the obsolete
/// white space before its colon (`Subject : hi`, `Date\t: ...`, RFC 5322 §4.5.3) is
/// given as `Subject: hi`. Verifiers (Mail::DKIM, OpenDKIM) read such a field by its
/// name, and relaxed canonicalization (RFC 6376 §3.4.2) drops that white space anyway,
/// so the signature covers exactly what they check; fed as it is, the signer would take
/// `Subject ` for the name and leave the field unsigned. The message sent is unchanged.
#[derive(Default)]
struct FieldNames {
    state: NameState,
    name: Vec<u8>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum NameState {
    /// At the start of a header line.
    #[default]
    LineStart,
    /// A CR at the start of a line: the blank line that ends the header, if LF follows.
    Cr,
    /// Reading a field name, up to its colon.
    Name,
    /// In a field's value, or a continuation line.
    Line,
    /// In the body: everything passes.
    Body,
}

/// Longest field name looked at; a longer one is passed on as it is.
const MAX_FIELD_NAME: usize = 998;

impl FieldNames {
    /// A field name still being read when the message ends (a header line without a
    /// colon): passed on as it was.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state == NameState::Name {
            out.extend_from_slice(&self.name);
            self.state = NameState::Line;
        }
    }

    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.state == NameState::Body {
            out.extend_from_slice(input);
            return;
        }
        for (i, &b) in input.iter().enumerate() {
            match self.state {
                NameState::Body => {
                    out.extend_from_slice(&input[i..]);
                    return;
                }
                NameState::LineStart => match b {
                    b'\r' => {
                        out.push(b);
                        self.state = NameState::Cr;
                    }
                    b'\n' => {
                        out.push(b);
                        self.state = NameState::Body;
                    }
                    b' ' | b'\t' => {
                        out.push(b);
                        self.state = NameState::Line;
                    }
                    _ => {
                        self.name.clear();
                        self.name.push(b);
                        self.state = NameState::Name;
                    }
                },
                NameState::Cr => {
                    out.push(b);
                    self.state = if b == b'\n' {
                        NameState::Body
                    } else {
                        NameState::Line
                    };
                }
                NameState::Name => match b {
                    b':' => {
                        let name = self.name.trim_ascii_end();
                        out.extend_from_slice(name);
                        out.push(b);
                        self.state = NameState::Line;
                    }
                    b'\n' => {
                        out.extend_from_slice(&self.name);
                        out.push(b);
                        self.state = NameState::LineStart;
                    }
                    _ if self.name.len() >= MAX_FIELD_NAME => {
                        out.extend_from_slice(&self.name);
                        out.push(b);
                        self.state = NameState::Line;
                    }
                    _ => self.name.push(b),
                },
                NameState::Line => {
                    out.push(b);
                    if b == b'\n' {
                        self.state = NameState::LineStart;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obsolete_white_space_before_a_colon_is_dropped_in_the_header_only() {
        let input = b"Subject : hi\r\nDate\t: Fri\r\n\tcont : y\r\nX-A:b\r\nFrom  :a@b\r\n\r\nBody : z\r\nTail";
        // Any chunking gives the same bytes.
        for size in [1, 2, 3, 7, input.len()] {
            let mut names = FieldNames::default();
            let mut out = Vec::new();
            for chunk in input.chunks(size) {
                names.feed(chunk, &mut out);
            }
            names.finish(&mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                "Subject: hi\r\nDate: Fri\r\n\tcont : y\r\nX-A:b\r\nFrom:a@b\r\n\r\nBody : z\r\nTail",
                "chunks of {size}"
            );
        }
        let mut names = FieldNames::default();
        let mut out = Vec::new();
        names.feed(b"NoColon", &mut out);
        names.finish(&mut out);
        assert_eq!(out, b"NoColon");
    }
}
