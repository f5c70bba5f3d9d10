//! Which events a history reader wants: the filter every back end applies the same
//! way (a back end may narrow its reading first, by index or by day, and must then
//! still pass each event through [`Query::matches`]).

use crate::{Event, Kind};

/// A history query.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only events at or after this unix time.
    pub since: Option<u64>,
    /// Only these kinds (empty: all).
    pub kinds: Vec<Kind>,
    /// Only events about this message or recipient: a spool id, a Message-ID or an
    /// address (see [`Event::concerns`]).
    pub key: Option<String>,
    /// Only events about this recipient (any case).
    pub recipient: Option<String>,
    /// Where the previous page ended (the back end's opaque cursor).
    pub cursor: Option<String>,
    /// Most events in a page.
    pub limit: usize,
}

/// Most events a page may hold.
pub const MAX_PAGE: usize = 1000;

impl Query {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        self.since.is_none_or(|t| event.time >= t)
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && self.key.as_deref().is_none_or(|k| event.concerns(k))
            && self
                .recipient
                .as_deref()
                .is_none_or(|r| event.recipient.eq_ignore_ascii_case(r))
    }

    /// The page size to use: the caller's, within 1..=[`MAX_PAGE`] (100 when unset).
    pub fn page_size(&self) -> usize {
        match self.limit {
            0 => 100,
            n => n.min(MAX_PAGE),
        }
    }

    /// A cheap test of a raw stored line before it is parsed: false only when the
    /// event it holds cannot pass (it lacks the key's or recipient's text, compared
    /// without regard to ASCII case, as addresses are).
    pub fn may_match_line(&self, line: &[u8]) -> bool {
        self.needle().is_none_or(|n| {
            let n = n.as_bytes();
            line.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
        })
    }

    /// The text (lower-cased) every stored line of a matching event contains, when
    /// there is one: a reader looks for it in the lower-cased line before parsing.
    pub fn needle(&self) -> Option<String> {
        let plain = |s: &&str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        };
        self.recipient
            .as_deref()
            .filter(plain)
            .or_else(|| {
                self.key
                    .as_deref()
                    .map(|k| k.trim_start_matches('<').trim_end_matches('>'))
                    .filter(plain)
            })
            .map(|n| n.to_ascii_lowercase())
    }
}

/// Whether a history key looks like an address (has an `@` and no angle brackets).
pub fn is_address(key: &str) -> bool {
    key.contains('@') && !key.starts_with('<')
}

/// Whether a history key looks like a Message-ID (`<...@...>`).
pub fn is_message_id(key: &str) -> bool {
    key.starts_with('<') && key.ends_with('>') && key.contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_filters_by_time_kind_key_and_recipient() {
        let mut e = Event::new(Kind::Deferred, "01M", "a@x", "Bob@Example.com");
        e.time = 100;
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            q.matches(&e)
        };
        assert!(q(&|_| {}));
        assert!(q(&|q| q.since = Some(100)));
        assert!(!q(&|q| q.since = Some(101)));
        assert!(q(&|q| q.kinds = vec![Kind::Bounced, Kind::Deferred]));
        assert!(!q(&|q| q.kinds = vec![Kind::Delivered]));
        assert!(q(&|q| q.key = Some("01M".into())));
        assert!(q(&|q| q.recipient = Some("bob@example.com".into())));
        assert!(!q(&|q| q.recipient = Some("bo@example.com".into())));
    }

    #[test]
    fn the_line_test_never_drops_a_line_whose_event_matches() {
        let e = Event::new(Kind::Accepted, "01M", "a@x", "Bob@Example.com")
            .with_message_id(Some("<m1@x>"));
        let line = e.to_line();
        for key in [
            "bob@example.com",
            "BOB@EXAMPLE.COM",
            "<m1@x>",
            "m1@x",
            "01M",
        ] {
            let q = Query {
                key: Some(key.into()),
                ..Default::default()
            };
            assert!(q.matches(&e) && q.may_match_line(line.as_bytes()), "{key}");
        }
        let q = Query {
            key: Some("carol@example.com".into()),
            ..Default::default()
        };
        assert!(!q.may_match_line(line.as_bytes()));
        assert_eq!(Query::default().page_size(), 100);
    }
}
