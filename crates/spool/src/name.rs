//! Node file names in the Mail::Spool 0.50 layout.
//!
//! A node is one recipient of one message, stored as `<tier>/<time>-<id>-<to>-<from>`.
//! 0.50 reads names with `^(\d+)-([^-]+)-([^-]+)-([^-]*)$`, so `to` and `from` must never
//! hold a raw `-`. We percent-encode, in one pass, every byte outside 0x20..=0x7E and
//! every `%`, `/` and `-` as `%XX` (upper-case hex). Readers decode `%xx` once, in either
//! case; anything else is taken literally. Promise: `decode(encode(b)) == b` for every
//! byte string, and every name we build matches the 0.50 pattern.

use std::fmt;

/// The longest file name we write. Linux and most filesystems allow 255 bytes; the lock
/// file `<node>.NFSLock` must fit too, so nodes get 8 bytes less.
pub const NAME_MAX: usize = 255;
/// Suffix of a File::NFSLock lock file.
pub const LOCK_SUFFIX: &str = ".NFSLock";
/// Longest node name, leaving room for [`LOCK_SUFFIX`].
pub const NODE_NAME_MAX: usize = NAME_MAX - LOCK_SUFFIX.len();

/// Percent-encode an address for a node name (see the module comment).
pub fn encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..=0x7e).contains(&b) && !matches!(b, b'%' | b'/' | b'-') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    out
}

/// Decode `%xx` (either case) once; a `%` not followed by two hex digits stays literal.
pub fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|&c| hex_value(c)),
                bytes.get(i + 2).and_then(|&c| hex_value(c)),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Whether `id` can be the message-id field of a node name: 1..=64 bytes of
/// `[A-Za-z0-9._+=]`, not starting with `.`. Stricter than 0.50's `[^-]+` on purpose:
/// ids also name files in `tmp/` and side data, and appear in logs.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'='))
}

/// Whether `name` is a File::NFSLock temp file: `<file>.tmp.<time % 10000>.<pid>.<rand>`.
/// File::NFSLock 1.29 writes one beside the node while it takes a lock, and links one
/// to the node itself to refresh NFS's cache after it took it; both would parse as a
/// node (with a sender ending `.tmp.N.N.N`, which no real domain does).
pub fn is_nfslock_temp(name: &str) -> bool {
    let mut parts = name.rsplitn(4, '.');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next())
        && digits(parts.next())
        && digits(parts.next())
        && parts.next().is_some_and(|rest| rest.ends_with(".tmp"))
}

/// The parsed name of a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeName {
    /// Unix time the node entered its tier.
    pub time: u64,
    /// Message id, shared by all nodes of one message.
    pub id: String,
    /// Recipient address (decoded).
    pub to: String,
    /// Envelope sender (decoded); empty is the null sender.
    pub from: String,
}

/// How a file name in a tier directory was understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A regular node name.
    Node(NodeName),
    /// A name that 0.50's fallback wrote with a raw `-` in an address, recovered because
    /// exactly one split yields two addresses.
    Rescued(NodeName),
    /// Not a node: a lock file, a lock temp file, or a hidden file. Skipped silently.
    NotANode,
    /// Looks like it was meant to be a node but cannot be read; reported, never fatal.
    Unparsable,
}

/// Names in a tier directory that are never nodes: hidden files (our lock temps), locks,
/// and File::NFSLock's temp files.
pub fn is_not_a_node(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with(LOCK_SUFFIX)
        || name.contains(".NFSLock.")
        || is_nfslock_temp(name)
}

impl NodeName {
    /// Build a node name; `to` and `from` are encoded.
    pub fn new(time: u64, id: impl Into<String>, to: &str, from: &str) -> Self {
        NodeName {
            time,
            id: id.into(),
            to: to.to_owned(),
            from: from.to_owned(),
        }
    }

    /// The file name, `<time>-<id>-<to>-<from>`, encoded.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.time,
            self.id,
            encode(self.to.as_bytes()),
            encode(self.from.as_bytes())
        )
    }

    /// The same node with another time (a fallback or a retry).
    pub fn with_time(&self, time: u64) -> Self {
        NodeName {
            time,
            ..self.clone()
        }
    }

    /// When the message was accepted: the time in its id when the id is one of ours (a
    /// ULID keeps its creation time in its first ten characters), else the time the
    /// node entered its tier (0.50 ids carry none; in tier 0 that is the acceptance).
    pub fn accepted_at(&self) -> u64 {
        const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let id = self.id.as_bytes();
        if id.len() == 26 {
            let mut ms: u64 = 0;
            for &c in &id[..10] {
                match CROCKFORD.iter().position(|&d| d == c.to_ascii_uppercase()) {
                    Some(v) => ms = ms.wrapping_mul(32).wrapping_add(v as u64),
                    None => return self.time,
                }
            }
            let secs = ms / 1000;
            // A ULID of the last ten years, not from the future. (Not bounded by the
            // node's time: `queue retry` back-dates a node to make it due.)
            let now = crate::now();
            if secs <= now + 60 && secs + 10 * 365 * 86_400 > now {
                return secs;
            }
        }
        self.time
    }

    /// Read a file name found in a tier directory.
    pub fn parse(name: &str) -> Parsed {
        if is_not_a_node(name) {
            return Parsed::NotANode;
        }
        let Some((time, rest)) = name.split_once('-') else {
            return Parsed::Unparsable;
        };
        if time.is_empty() || !time.bytes().all(|b| b.is_ascii_digit()) {
            return Parsed::Unparsable;
        }
        let Ok(time) = time.parse::<u64>() else {
            return Parsed::Unparsable;
        };
        let Some((id, rest)) = rest.split_once('-') else {
            return Parsed::Unparsable;
        };
        if id.is_empty() {
            return Parsed::Unparsable;
        }
        let fields: Vec<&str> = rest.split('-').collect();
        if fields.len() == 2 && !fields[0].is_empty() {
            let name = NodeName {
                time,
                id: id.to_owned(),
                to: lossy(fields[0]),
                from: lossy(fields[1]),
            };
            // A name anyone could plant: its addresses go on the wire, so nothing that
            // could end or add an SMTP command gets through (quarantined by fsck).
            if !name.envelope_safe() {
                return Parsed::Unparsable;
            }
            return Parsed::Node(name);
        }
        rescue(time, id, rest)
            .filter(NodeName::envelope_safe)
            .map_or(Parsed::Unparsable, Parsed::Rescued)
    }

    /// The recipient as it goes to `RCPT TO`: 0.50 stored `Name <a@b>` as given and its
    /// dequeue (Net::SMTP) sent the part in angle brackets; a bare address as it is.
    pub fn envelope_to(&self) -> &str {
        envelope_address(&self.to)
    }

    /// The sender as it goes to `MAIL FROM` (see [`NodeName::envelope_to`]).
    pub fn envelope_from(&self) -> &str {
        envelope_address(&self.from)
    }

    /// No control character (CR, LF, NUL, ...) in either address, and angle brackets
    /// only as one balanced `<...>` pair.
    fn envelope_safe(&self) -> bool {
        [&self.to, &self.from].iter().all(|a| {
            !a.chars().any(char::is_control)
                && a.matches('<').count() == a.matches('>').count()
                && a.matches('<').count() <= 1
                && a.find('<')
                    .is_none_or(|open| a.find('>').is_some_and(|close| close > open))
        })
    }
}

/// The address inside `<...>` when there is one, else the field trimmed.
fn envelope_address(field: &str) -> &str {
    match (field.find('<'), field.find('>')) {
        (Some(open), Some(close)) if close > open => field[open + 1..close].trim(),
        _ => field.trim(),
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

fn lossy(field: &str) -> String {
    String::from_utf8_lossy(&decode(field)).into_owned()
}

/// 0.50's fallback renamed nodes with decoded addresses, so `first-last@x-me@y` has one
/// `-` too many. Keep the one split where both halves look like addresses (an empty
/// sender counts: the null sender); give up when there is none or more than one.
fn rescue(time: u64, id: &str, rest: &str) -> Option<NodeName> {
    let mut found = None;
    for (i, _) in rest.match_indices('-') {
        let (to, from) = (&rest[..i], &rest[i + 1..]);
        let to = lossy(to);
        let from = lossy(from);
        if looks_like_address(&to) && (from.is_empty() || looks_like_address(&from)) {
            if found.is_some() {
                return None;
            }
            found = Some(NodeName {
                time,
                id: id.to_owned(),
                to,
                from,
            });
        }
    }
    found
}

/// A loose check used only to recover names: `local@domain` with a non-empty local part
/// and a domain of letters, digits, `-`, `.` (or an address literal).
pub fn looks_like_address(addr: &str) -> bool {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    let literal = domain.starts_with('[') && domain.ends_with(']');
    !local.is_empty()
        && !domain.is_empty()
        && !domain.starts_with(['-', '.'])
        && !domain.ends_with(['-', '.'])
        && (literal
            || domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matches_050_pattern(name: &str) -> bool {
        // ^(\d+)-([^-]+)-([^-]+)-([^-]*)$
        let parts: Vec<&str> = name.split('-').collect();
        parts.len() == 4
            && !parts[0].is_empty()
            && parts[0].bytes().all(|b| b.is_ascii_digit())
            && !parts[1].is_empty()
            && !parts[2].is_empty()
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(decode(&encode(&bytes)), bytes);
        }

        #[test]
        fn encoded_names_match_the_050_pattern(
            time in 0u64..10_000_000_000,
            to in "\\PC{1,40}",
            from in proptest::option::of("\\PC{0,40}"),
        ) {
            let from = from.unwrap_or_default();
            let node = NodeName::new(time, "01JABCDEF", &to, &from);
            let name = node.file_name();
            prop_assert!(matches_050_pattern(&name), "{}", name);
            prop_assert!(name.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'/'));
            // Names whose addresses could not go on the wire as they are never parse.
            let expected = if node.envelope_safe() {
                Parsed::Node(node)
            } else {
                Parsed::Unparsable
            };
            prop_assert_eq!(NodeName::parse(&name), expected);
        }
    }

    #[test]
    fn encodes_the_reserved_bytes_upper_case() {
        assert_eq!(encode(b"a-b/c%d e"), "a%2Db%2Fc%25d e");
        assert_eq!(encode("é\n".as_bytes()), "%C3%A9%0A");
    }

    #[test]
    fn parses_real_050_names() {
        // Lower-case escapes, as 0.50 wrote them.
        let Parsed::Node(n) = NodeName::parse("1054328821-a1b2c3d4e5-first%2dlast@x.com-me@y.org")
        else {
            panic!("not parsed")
        };
        assert_eq!(n.time, 1054328821);
        assert_eq!(n.id, "a1b2c3d4e5");
        assert_eq!(n.to, "first-last@x.com");
        assert_eq!(n.from, "me@y.org");

        // Empty from: the null sender.
        let Parsed::Node(n) = NodeName::parse("1054328821-3f9a0c-bob@example.com-") else {
            panic!("not parsed")
        };
        assert_eq!(n.from, "");

        // 0.50 double-encoded non-ASCII: decoded once, it stays `%C3%A9` as 0.50 read it.
        let Parsed::Node(n) = NodeName::parse("1054328821-deadbeef-caf%25C3%25A9@x.fr-a@b.c")
        else {
            panic!("not parsed")
        };
        assert_eq!(n.to, "caf%C3%A9@x.fr");

        // A `%` that is not an escape is literal.
        let Parsed::Node(n) = NodeName::parse("1-id-100%@x.com-a%zz@b.c") else {
            panic!("not parsed")
        };
        assert_eq!((n.to.as_str(), n.from.as_str()), ("100%@x.com", "a%zz@b.c"));
    }

    #[test]
    fn skips_locks_and_hidden_files() {
        assert_eq!(NodeName::parse("1-a-b@c-d@e.NFSLock"), Parsed::NotANode);
        assert_eq!(NodeName::parse(".lock.host.1.2"), Parsed::NotANode);
        assert_eq!(
            NodeName::parse("1-a-b@c-d@e.NFSLock.tmp.1.2.3"),
            Parsed::NotANode
        );
    }

    #[test]
    fn file_nfslock_temp_files_are_not_nodes() {
        // File::NFSLock 1.29's rand_file(): "$file.tmp." . time()%10000 . ".$$." . int(rand()*10000)
        for name in [
            "1700000000-3F9A0C12AB34CD56-bob@example.com-alice@example.org.tmp.4821.31337.977",
            "1700000000-3F9A0C12AB34CD56-bob@example.com-.tmp.0.1.0",
            "1700000000-ID-a@b-c@d.NFSLock.tmp.12.34.56",
        ] {
            assert!(
                is_nfslock_temp(name) || name.contains(".NFSLock."),
                "{name}"
            );
            assert_eq!(NodeName::parse(name), Parsed::NotANode, "{name}");
        }
        // A sender whose domain merely contains "tmp" is still a node.
        assert!(matches!(
            NodeName::parse("1-id-a@b-c@tmp.example.org"),
            Parsed::Node(_)
        ));
        assert!(!is_nfslock_temp("1-id-a@b-c@x.tmp.1.2"));
    }

    #[test]
    fn reports_garbage() {
        for bad in [
            "",
            "abc",
            "12",
            "12-",
            "12-id",
            "x1-id-a@b-c@d",
            "1--a@b-",
            "1-id--x@y",
        ] {
            assert_eq!(NodeName::parse(bad), Parsed::Unparsable, "{bad:?}");
        }
    }

    #[test]
    fn rescues_raw_dash_from_050_fallback() {
        let Parsed::Rescued(n) = NodeName::parse("1700000000-abc-first-last@x.com-me@y.com") else {
            panic!("not rescued")
        };
        assert_eq!(
            (n.to.as_str(), n.from.as_str()),
            ("first-last@x.com", "me@y.com")
        );
        assert_eq!(
            NodeName::parse(&n.file_name()),
            Parsed::Node(n.clone()),
            "re-encoded name is regular"
        );

        let Parsed::Rescued(n) = NodeName::parse("1700000000-abc-a@x.com-me@my-host.org") else {
            panic!("not rescued")
        };
        assert_eq!(n.from, "me@my-host.org");
        // `a@x.com` + `my-self@y.com` or `a@x.com-my` + `self@y.com`: both read as two
        // addresses, so it is not guessed.
        assert_eq!(
            NodeName::parse("1700000000-abc-a@x.com-my-self@y.com"),
            Parsed::Unparsable
        );

        // Two splits give two addresses: ambiguous, reported instead of guessed.
        assert_eq!(
            NodeName::parse("1700000000-abc-a@x-b@y-c@z"),
            Parsed::Unparsable
        );
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("01JDX3Q4M6ZK1V6T7E2N8R9S0P"));
        assert!(is_valid_id("1abc.def"));
        for bad in ["", "a-b", "a/b", ".x", "a b", "a%b", &"x".repeat(65)] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any file name: the parser never panics, and a name it reads as a node
        /// re-encodes to a name that reads back the same.
        #[test]
        fn parse_is_total(name in "\\PC{0,120}") {
            match NodeName::parse(&name) {
                Parsed::Node(n) | Parsed::Rescued(n) => {
                    prop_assert_eq!(NodeName::parse(&n.file_name()), Parsed::Node(n.clone()));
                }
                Parsed::NotANode | Parsed::Unparsable => {}
            }
        }
    }

    #[test]
    fn accepted_at_reads_a_ulid_and_falls_back_to_the_node_time() {
        let t = crate::now() - 3600;
        let id = ulid::Ulid::from_parts(t * 1000 + 123, 42).to_string();
        assert_eq!(NodeName::new(t + 60, &id, "a@b", "").accepted_at(), t);
        // Back-dated by a retry: still the id's time.
        assert_eq!(NodeName::new(t - 1800, &id, "a@b", "").accepted_at(), t);
        // A 0.50 id, or a ULID from the future: the node's time.
        assert_eq!(NodeName::new(t, "13949.1", "a@b", "").accepted_at(), t);
        let future = ulid::Ulid::from_parts((t + 86_400) * 1000, 1).to_string();
        assert_eq!(NodeName::new(t, &future, "a@b", "").accepted_at(), t);
    }
}
