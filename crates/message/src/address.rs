//! Addresses: the addr-specs inside RFC 5322 address lists (To, Cc, Bcc, From), and the
//! checks an envelope address must pass before it names a node.
//!
//! We only need the addresses, never the display names, so RFC 2047 words, comments and
//! phrases are skipped rather than decoded. Quoted local parts are kept quoted (and
//! unquoted when the quotes were not needed), groups are flattened, source routes in
//! angle addresses (`<@a,@b:u@c>`) are dropped.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest local part (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL: usize = 64;
/// Longest address (RFC 5321 path limit, minus the angle brackets).
pub const MAX_ADDRESS: usize = 254;

/// An address that cannot be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed address {text:?}: {reason}")]
pub struct AddressError {
    /// The address as written.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn bad(text: &str, reason: &'static str) -> AddressError {
    AddressError {
        text: text.trim().to_owned(),
        reason,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Literal(String),
    Special(char),
}

/// Split a header value into tokens with their byte offsets; comments and white space
/// are dropped.
fn tokenize(text: &str) -> Result<Vec<(usize, Tok)>, AddressError> {
    let bytes = text.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'(' => {
                let mut depth = 0usize;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err(bad(text, "unclosed comment"));
                }
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err(bad(text, "unclosed quoted string"));
                }
                i += 1;
                toks.push((start, Tok::Quoted(text[start..i].to_owned())));
            }
            b'[' => {
                let start = i;
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err(bad(text, "unclosed address literal"));
                }
                i += 1;
                toks.push((start, Tok::Literal(text[start..i].to_owned())));
            }
            b'<' | b'>' | b'@' | b',' | b':' | b';' | b'.' => {
                toks.push((i, Tok::Special(c as char)));
                i += 1;
            }
            _ => {
                let start = i;
                while i < bytes.len()
                    && !matches!(
                        bytes[i],
                        b' ' | b'\t'
                            | b'\r'
                            | b'\n'
                            | b'('
                            | b'"'
                            | b'['
                            | b'<'
                            | b'>'
                            | b'@'
                            | b','
                            | b':'
                            | b';'
                            | b'.'
                    )
                {
                    i += 1;
                }
                toks.push((start, Tok::Word(text[start..i].to_owned())));
            }
        }
    }
    Ok(toks)
}

/// The addresses in an address-list header value (To, Cc, Bcc, From, or a command-line
/// recipient), each checked with [`check_address`]. Empty groups and empty list members
/// are skipped.
pub fn parse_address_list(text: &str) -> Result<Vec<String>, AddressError> {
    parse_address_list_in(text, None)
}

/// [`parse_address_list`], with a bare local part (`root`, `<alice>`: one word, no `@`)
/// taken as `local@qualify` when `qualify` is given (sendmail's and Postfix's
/// `myorigin`), refused when not.
pub fn parse_address_list_in(
    text: &str,
    qualify: Option<&str>,
) -> Result<Vec<String>, AddressError> {
    let toks = tokenize(text)?;
    let mut out = Vec::new();
    let mut item_start = 0usize;
    let mut words: Vec<&Tok> = Vec::new();
    let mut angle: Option<Vec<&Tok>> = None;
    let mut in_group = false;
    let mut i = 0;
    let mut flush = |words: &mut Vec<&Tok>,
                     angle: &mut Option<Vec<&Tok>>,
                     start: usize,
                     end: usize|
     -> Result<(), AddressError> {
        let original = &text[start.min(text.len())..end.min(text.len())];
        let (spec, one_word) = match angle.take() {
            Some(inner) => {
                // Drop a source route: everything up to the last ':'.
                let from = inner
                    .iter()
                    .rposition(|t| **t == Tok::Special(':'))
                    .map_or(0, |p| p + 1);
                if !words.is_empty() {
                    return Err(bad(original, "text after the address"));
                }
                (join(&inner[from..]), inner.len() - from == 1)
            }
            None => (join(words), words.len() == 1),
        };
        // Only a lone word is a bare local part: "Alice Smith" is a name, not `AliceSmith`.
        let spec = match qualify {
            Some(domain) if one_word && !spec.contains('@') => format!("{spec}@{domain}"),
            _ => spec,
        };
        words.clear();
        if spec.is_empty() {
            if original.trim().is_empty() {
                return Ok(());
            }
            return Err(bad(original, "no address"));
        }
        out.push(check_address(&spec).map_err(|e| AddressError {
            text: original.trim().to_owned(),
            reason: e.reason,
        })?);
        Ok(())
    };
    while i < toks.len() {
        let (pos, tok) = &toks[i];
        match tok {
            Tok::Special(',') => {
                flush(&mut words, &mut angle, item_start, *pos)?;
                item_start = pos + 1;
            }
            Tok::Special(';') if in_group => {
                flush(&mut words, &mut angle, item_start, *pos)?;
                in_group = false;
                item_start = pos + 1;
            }
            Tok::Special(':') if !in_group && angle.is_none() => {
                // "name: a, b;" — the words so far were the group's name.
                words.clear();
                in_group = true;
                item_start = pos + 1;
            }
            Tok::Special('<') => {
                if angle.is_some() {
                    return Err(bad(&text[item_start..], "nested '<'"));
                }
                let mut inner = Vec::new();
                i += 1;
                while i < toks.len() && toks[i].1 != Tok::Special('>') {
                    inner.push(&toks[i].1);
                    i += 1;
                }
                if i >= toks.len() {
                    return Err(bad(&text[item_start..], "missing '>'"));
                }
                angle = Some(inner);
                // Words before '<' are the display name, not part of the address.
                words.clear();
            }
            Tok::Special('>') => return Err(bad(&text[item_start..], "stray '>'")),
            _ => words.push(tok),
        }
        i += 1;
    }
    flush(&mut words, &mut angle, item_start, text.len())?;
    Ok(out)
}

fn join(toks: &[&Tok]) -> String {
    let mut s = String::new();
    for t in toks {
        match t {
            Tok::Word(w) | Tok::Quoted(w) | Tok::Literal(w) => s.push_str(w),
            Tok::Special(c) => s.push(*c),
        }
    }
    s
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|p| !p.is_empty() && p.chars().all(is_atext))
}

/// Check an addr-spec (`local@domain`) and return it normalised: quotes dropped from a
/// local part that does not need them, kept (minimally escaped) where it does. Refuses
/// addresses without a domain, control characters, over-long parts, and addresses that
/// start with `-` (so no address can ever be taken for an option further down).
pub fn check_address(spec: &str) -> Result<String, AddressError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(bad(spec, "empty address"));
    }
    if spec.starts_with('-') {
        return Err(bad(spec, "addresses may not start with '-'"));
    }
    if spec.chars().any(|c| c.is_control()) {
        return Err(bad(spec, "control character"));
    }
    let (local, domain) = split_local(spec)?;
    let local = normalise_local(spec, local)?;
    if local.len() > MAX_LOCAL {
        return Err(bad(spec, "local part over 64 bytes"));
    }
    check_domain(spec, domain)?;
    let addr = format!("{local}@{domain}");
    // Again after unquoting: "-oQ/tmp"@x would otherwise come out as -oQ/tmp@x.
    if addr.starts_with('-') {
        return Err(bad(spec, "addresses may not start with '-'"));
    }
    if addr.len() > MAX_ADDRESS {
        return Err(bad(spec, "address over 254 bytes"));
    }
    // Legal inside quotes, but a node name holding one could not be told from 0.50's
    // `Name <addr>` form: refused, as nobody needs them.
    if addr.contains(['<', '>']) {
        return Err(bad(spec, "angle brackets inside an address"));
    }
    Ok(addr)
}

/// Split at the `@` that ends the local part (a quoted local part may contain `@`).
fn split_local(spec: &str) -> Result<(&str, &str), AddressError> {
    let at = if spec.starts_with('"') {
        let bytes = spec.as_bytes();
        let mut i = 1;
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' {
                i += 1;
            }
            i += 1;
        }
        if bytes.get(i + 1) != Some(&b'@') {
            return Err(bad(spec, "expected '@' after the quoted local part"));
        }
        i + 1
    } else {
        spec.find('@')
            .ok_or_else(|| bad(spec, "no domain (write user@domain)"))?
    };
    Ok((&spec[..at], &spec[at + 1..]))
}

fn normalise_local(spec: &str, local: &str) -> Result<String, AddressError> {
    if let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        let mut raw = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            raw.push(if c == '\\' {
                chars
                    .next()
                    .ok_or_else(|| bad(spec, "bad quoted local part"))?
            } else {
                c
            });
        }
        if is_dot_atom(&raw) {
            return Ok(raw);
        }
        if raw.is_empty() {
            return Err(bad(spec, "empty local part"));
        }
        let mut quoted = String::from("\"");
        for c in raw.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        return Ok(quoted);
    }
    if !is_dot_atom(local) {
        return Err(bad(
            spec,
            "local part has characters that need quoting, or stray dots",
        ));
    }
    Ok(local.to_owned())
}

fn check_domain(spec: &str, domain: &str) -> Result<(), AddressError> {
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ok = match lit.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
            None => lit.parse::<Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(())
        } else {
            Err(bad(spec, "bad address literal"))
        };
    }
    if domain.is_empty() {
        return Err(bad(spec, "empty domain"));
    }
    if domain.len() > 253 {
        return Err(bad(spec, "domain over 253 bytes"));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(bad(spec, "empty label in domain"));
        }
        if label.len() > 63 {
            return Err(bad(spec, "domain label over 63 bytes"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad(spec, "domain label starts or ends with '-'"));
        }
        if !label.chars().all(|c| {
            c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric())
        }) {
            return Err(bad(
                spec,
                "domain has characters other than letters, digits, '-' and '.'",
            ));
        }
    }
    Ok(())
}

/// One recipient given as an argument (`mailspool send ADDR`, `sendmail ADDR`):
/// `user@domain`, `<user@domain>` or `Name <user@domain>`. Anything else is an error,
/// never rewritten: two addresses, a group, a line break (`"x\nBcc: y"`), white space
/// inside the address (`a b@x` is not `ab@x`).
pub fn parse_recipient(text: &str) -> Result<String, AddressError> {
    parse_recipient_in(text, None)
}

/// [`parse_recipient`], qualifying a bare local part (`root`) with `qualify`.
pub fn parse_recipient_in(text: &str, qualify: Option<&str>) -> Result<String, AddressError> {
    if text.chars().any(|c| c.is_control()) {
        return Err(bad(
            text,
            "control character (a line break?) in a recipient",
        ));
    }
    let t = text.trim();
    if t.starts_with('-') {
        return Err(bad(t, "addresses may not start with '-'"));
    }
    let spec = match (t.rfind('<'), t.strip_suffix('>')) {
        (Some(i), Some(inner)) if i < inner.len() => &inner[i + 1..],
        _ => t,
    };
    let mut quoted = false;
    let mut escaped = false;
    for c in spec.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if !quoted
            && (c.is_whitespace() || matches!(c, ',' | ':' | ';' | '(' | ')' | '<' | '>'))
        {
            return Err(bad(
                text,
                "one address per recipient, without spaces or comments in it",
            ));
        }
    }
    let addrs = parse_address_list_in(t, qualify)?;
    match addrs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(bad(text, "empty address")),
        _ => Err(bad(text, "one address per recipient")),
    }
}

/// The envelope sender as given by a user (`-f`): empty or `<>` is the null sender, and
/// `<addr>` is taken without its brackets.
pub fn parse_sender(text: &str) -> Result<String, AddressError> {
    parse_sender_in(text, None)
}

/// [`parse_sender`], qualifying a bare local part (`-f root`) with `qualify`.
pub fn parse_sender_in(text: &str, qualify: Option<&str>) -> Result<String, AddressError> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err(bad(t, "addresses may not start with '-'"));
    }
    let inner = t
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(t)
        .trim();
    if inner.is_empty() {
        return Ok(String::new());
    }
    match qualify {
        Some(domain) if !inner.contains('@') && !inner.starts_with('-') => {
            check_address(&format!("{inner}@{domain}"))
        }
        _ => check_address(inner),
    }
}

/// The key two addresses are duplicates under: the local part as written, the domain
/// in lower case.
pub fn dedup_key(addr: &str) -> String {
    match addr.rsplit_once('@') {
        Some((l, d)) => format!("{l}@{}", d.to_lowercase()),
        None => addr.to_owned(),
    }
}

#[cfg(test)]
mod tests;
