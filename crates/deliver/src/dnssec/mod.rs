//! Whether a DNS answer is proven by DNSSEC, for DANE (RFC 7672 §2.1).
//!
//! Two trust models, as Postfix and Exim have them:
//! - **The resolver's word** (default): the configured `resolver` (else the system's
//!   name servers) must validate, and is asked with AD and DO set (RFC 6840 §5.7); an
//!   answer with AD is secure, an unsigned one without AD insecure, and SERVFAIL
//!   (what a validating resolver answers for bogus data) or no answer a lookup error.
//!   A signed answer without AD is insecure only if the resolver validates (it sets
//!   AD on the signed root); from one that does not, it is indeterminate. The path to
//!   the resolver must be trusted: normally it runs on this host, on loopback.
//! - **Validated here** (`dnssec_trust_anchors = "FILE"`): hickory validates every
//!   answer from the anchors in that file (DNSKEY or DS lines), for hosts whose
//!   resolver does not validate. Names under no anchor are insecure.
//!
//! Every failure is a [`Dnssec::Bogus`]: DANE fails closed on it (the mail waits).

use hickory_resolver::proto::rr::RData;

mod anchors;
mod readiness;
mod stub;

pub use anchors::{AnchorFile, LocalValidator};
pub use readiness::{Finding, readiness};
pub use stub::{StubAnswer, StubResolver};

/// What DNSSEC says of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dnssec {
    /// Validated from a trust anchor.
    Secure,
    /// Provably unsigned (or under no trust anchor): DANE does not apply.
    Insecure,
    /// Bogus, indeterminate, or no answer at all: DANE cannot decide, so mail waits.
    Bogus(String),
}

/// An answer and its status; `records` holds the RRset of the type asked for (empty
/// for a name or type that does not exist).
#[derive(Debug, Clone)]
pub struct Proven {
    /// What DNSSEC says.
    pub status: Dnssec,
    /// The records.
    pub records: Vec<RData>,
}

impl Proven {
    /// An answer DNSSEC says nothing about.
    pub fn insecure() -> Proven {
        Proven {
            status: Dnssec::Insecure,
            records: Vec::new(),
        }
    }

    fn bogus(why: String) -> Proven {
        Proven {
            status: Dnssec::Bogus(why),
            records: Vec::new(),
        }
    }
}
