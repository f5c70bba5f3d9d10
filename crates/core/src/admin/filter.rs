//! Which nodes a listing or a bulk change applies to. Every test is on the node's name
//! (tier, held, recipient, sender, queued time): the name is the index, so filtering a
//! million nodes reads no file.

use mailspool_spool::NodeEntry;
use serde::Deserialize;

/// A filter; every field that is set must match.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only this tier.
    pub tier: Option<usize>,
    /// Only recipients at this domain (case-insensitive).
    pub domain: Option<String>,
    /// Only this envelope sender (case-insensitive; `""` or `<>` is the null sender).
    pub sender: Option<String>,
    /// Only this recipient (case-insensitive).
    pub recipient: Option<String>,
    /// Only nodes queued at least this many seconds ago.
    pub older_than: Option<u64>,
    /// Only held (true) or only not held (false) nodes.
    pub held: Option<bool>,
    /// Only this message id.
    pub id: Option<String>,
}

impl Filter {
    /// Whether nothing is set (a bulk change with no filter would touch every node, so
    /// the API refuses it).
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether `n` passes, at unix time `now`.
    pub fn matches(&self, n: &NodeEntry, now: u64) -> bool {
        if self.tier.is_some_and(|t| t != n.tier) || self.held.is_some_and(|h| h != n.held) {
            return false;
        }
        if self.id.as_ref().is_some_and(|id| *id != n.name.id) {
            return false;
        }
        if let Some(d) = &self.domain {
            let at = n.name.to.rsplit_once('@').map_or("", |(_, d)| d);
            if !at.eq_ignore_ascii_case(d.trim_start_matches('@')) {
                return false;
            }
        }
        if let Some(s) = &self.sender
            && !n.name.from.eq_ignore_ascii_case(s.trim_matches(['<', '>']))
        {
            return false;
        }
        if let Some(r) = &self.recipient
            && !n.name.to.eq_ignore_ascii_case(r.trim_matches(['<', '>']))
        {
            return false;
        }
        if let Some(age) = self.older_than
            && n.name.time.saturating_add(age) > now
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailspool_spool::NodeName;

    fn node(tier: usize, held: bool, time: u64, to: &str, from: &str) -> NodeEntry {
        let name = NodeName::new(time, "id1", to, from);
        NodeEntry {
            tier,
            file_name: name.file_name(),
            path: Default::default(),
            name,
            rescued: false,
            held,
            ino: 1,
        }
    }

    #[test]
    fn every_field_that_is_set_must_match() {
        let n = node(2, false, 1_000, "Bob@Example.ORG", "app@example.com");
        let now = 1_600;
        assert!(Filter::default().matches(&n, now));
        let f = |f: Filter| f.matches(&n, now);
        assert!(f(Filter {
            tier: Some(2),
            ..Default::default()
        }));
        assert!(!f(Filter {
            tier: Some(1),
            ..Default::default()
        }));
        assert!(f(Filter {
            domain: Some("example.org".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            domain: Some("ample.org".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            recipient: Some("<bob@example.org>".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            recipient: Some("bo@example.org".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            sender: Some("APP@example.com".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            sender: Some("".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            older_than: Some(600),
            ..Default::default()
        }));
        assert!(!f(Filter {
            older_than: Some(601),
            ..Default::default()
        }));
        assert!(f(Filter {
            held: Some(false),
            ..Default::default()
        }));
        assert!(!f(Filter {
            held: Some(true),
            ..Default::default()
        }));
        assert!(!f(Filter {
            id: Some("id2".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            tier: Some(2),
            held: Some(true),
            ..Default::default()
        }));
    }
}
