//! The return path (VERP): with `[return_path] address = "bounces@bounce.example.com"`,
//! mail goes out with the envelope sender `bounces+<id>.<sig>@bounce.example.com`, where
//! `<id>` is the message's id and `<sig>` a keyed hash of it, so a bounce that comes back
//! later names the message it is about, and nobody can make one up for a message of
//! their choosing.

/// A return path: its address and signing key.
#[derive(Clone)]
pub struct ReturnPath {
    local: String,
    domain: String,
    key: ring::hmac::Key,
}

impl std::fmt::Debug for ReturnPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReturnPath({}@{})", self.local, self.domain)
    }
}

/// Hex digits of the signature (64 bits).
const SIG: usize = 16;

impl ReturnPath {
    /// `address` (`bounces@bounce.example.com`) and a secret of at least 16 bytes.
    pub fn new(address: &str, secret: &[u8]) -> Result<ReturnPath, String> {
        let (local, domain) = address
            .rsplit_once('@')
            .filter(|(l, d)| !l.is_empty() && d.contains('.') && !l.contains('+'))
            .ok_or_else(|| format!("return path {address:?}: write local@domain, without '+'"))?;
        if secret.len() < 16 {
            return Err("the return path's secret is shorter than 16 bytes".into());
        }
        Ok(ReturnPath {
            local: local.to_owned(),
            domain: domain.to_ascii_lowercase(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        })
    }

    /// The domain bounces come back to (`serve` takes mail for it from anyone).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn sig(&self, id: &str) -> String {
        let tag = ring::hmac::sign(&self.key, id.as_bytes());
        tag.as_ref()[..SIG / 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The envelope sender for message `id`.
    pub fn sender(&self, id: &str) -> String {
        format!("{}+{id}.{}@{}", self.local, self.sig(id), self.domain)
    }

    /// The message id a recipient address of ours names, if it is a return path this key
    /// signed (case is not trusted to survive the trip: ids are compared upper-case).
    pub fn message_of(&self, rcpt: &str) -> Option<String> {
        let (local, domain) = rcpt.rsplit_once('@')?;
        if !domain.eq_ignore_ascii_case(&self.domain) {
            return None;
        }
        let token = local
            .get(..self.local.len())
            .filter(|l| l.eq_ignore_ascii_case(&self.local))
            .and_then(|_| local[self.local.len()..].strip_prefix('+'))?;
        let (id, sig) = token.rsplit_once('.')?;
        [id.to_owned(), id.to_ascii_uppercase()]
            .into_iter()
            .find(|id| {
                let want = self.sig(id);
                // Constant time: a guess learns nothing from how long the compare took.
                want.len() == sig.len()
                    && want
                        .bytes()
                        .zip(sig.bytes().map(|b| b.to_ascii_lowercase()))
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            })
    }

    /// Whether `rcpt` is at the return path's domain (then it is ours to take or refuse).
    pub fn is_ours(&self, rcpt: &str) -> bool {
        rcpt.rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&self.domain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_return_path_names_its_message_and_cannot_be_forged() {
        let rp = ReturnPath::new("bounces@Bounce.Example.com", b"0123456789abcdef0123").unwrap();
        let id = "01M91STM6NY1S37TT7B209Z150";
        let sender = rp.sender(id);
        assert!(
            sender.starts_with("bounces+01M91STM6NY1S37TT7B209Z150."),
            "{sender}"
        );
        assert!(sender.ends_with("@bounce.example.com"));
        assert_eq!(rp.message_of(&sender).as_deref(), Some(id));
        // Case lost on the way back still names it.
        assert_eq!(rp.message_of(&sender.to_lowercase()).as_deref(), Some(id));
        assert_eq!(rp.message_of(&sender.to_uppercase()).as_deref(), Some(id));
        // Another id with this signature, or another key, names nothing.
        let forged = sender.replace("Z150", "Z151");
        assert_eq!(rp.message_of(&forged), None);
        let other = ReturnPath::new("bounces@bounce.example.com", b"another secret key!!").unwrap();
        assert_eq!(other.message_of(&sender), None);
        assert_eq!(rp.message_of("bounces@bounce.example.com"), None);
        assert_eq!(
            rp.message_of(&sender.replace("bounce.example.com", "x.example")),
            None
        );
        assert!(rp.is_ours("anything@BOUNCE.example.com"));
        assert!(ReturnPath::new("b+x@d.example", b"0123456789abcdef").is_err());
        assert!(ReturnPath::new("b@d.example", b"short").is_err());
    }
}
