//! AUTH PLAIN and LOGIN (RFC 4954), offered only under TLS or on loopback. Failures
//! (wrong password, credentials that do not decode, a cancelled exchange) are delayed
//! and counted; too many close the connection.
//!
//! Memory: each check runs argon2 (19 MiB) on the blocking pool. At most
//! [`max_checks`] run at once, in the whole process, however many clients try; the
//! others wait their turn (within the command timeout), so a flood of AUTH attempts
//! costs time, not memory. See [`crate::tune_allocator`] for giving the memory back.

use std::sync::LazyLock;

use base64::Engine as _;
use mailspool_spool::escape;
use tokio::sync::Semaphore;

use super::{Line, Session};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Password checks at once: one per core, at most four.
pub fn max_checks() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4))
}

static CHECKS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(max_checks()));

impl Session {
    /// Read one line of an AUTH exchange ("*" cancels).
    async fn auth_line(&mut self) -> Result<Option<String>, &'static str> {
        match self.read_line().await? {
            Line::Command(l) => {
                let text = String::from_utf8_lossy(&l).trim().to_owned();
                Ok((text != "*").then_some(text))
            }
            _ => Ok(None),
        }
    }

    /// `true` ends the session.
    pub(super) async fn authenticate(
        &mut self,
        mechanism: u64,
        initial: String,
    ) -> Result<bool, &'static str> {
        if !self.auth_offered() {
            self.refuse("538 5.7.11 Encryption required for requested authentication mechanism")
                .await?;
            return Ok(false);
        }
        if self.auth.is_some() || self.tx.is_some() {
            self.refuse("503 5.5.1 AUTH not allowed now").await?;
            return Ok(false);
        }
        let credentials = if mechanism == smtp_proto::AUTH_PLAIN {
            let token = if initial.is_empty() || initial == "=" {
                self.reply("334 ").await?;
                self.auth_line().await?
            } else {
                Some(initial)
            };
            token.and_then(|t| B64.decode(t).ok()).and_then(|bytes| {
                let mut parts = bytes
                    .split(|&b| b == 0)
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                let (_authzid, user, pass) = (parts.next()?, parts.next()?, parts.next()?);
                Some((user, pass))
            })
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            let user = if initial.is_empty() {
                self.reply("334 VXNlcm5hbWU6").await?;
                self.auth_line().await?
            } else {
                Some(initial)
            };
            let user = user.and_then(|u| B64.decode(u).ok());
            let pass = match user {
                Some(_) => {
                    self.reply("334 UGFzc3dvcmQ6").await?;
                    self.auth_line().await?.and_then(|p| B64.decode(p).ok())
                }
                None => None,
            };
            user.zip(pass).map(|(u, p)| {
                (
                    String::from_utf8_lossy(&u).into_owned(),
                    String::from_utf8_lossy(&p).into_owned(),
                )
            })
        } else {
            self.refuse("504 5.5.4 Unrecognized authentication type")
                .await?;
            return Ok(false);
        };
        let Some((user, pass)) = credentials else {
            // Garbage or a cancel costs what a wrong password costs: no free guesses
            // and no free probing of the decoder.
            return self
                .auth_failed("-", "501 5.5.2 Cannot decode the credentials, or cancelled")
                .await;
        };
        let ok = {
            let _turn = CHECKS.acquire().await.map_err(|_| "shutting down")?;
            let users = self.ctx.users.clone();
            let name = user.clone();
            tokio::task::spawn_blocking(move || users.verify(&name, &pass))
                .await
                .unwrap_or(false)
        };
        if ok {
            tracing::info!(client = %self.peer.literal(), user = %escape(&user), "authenticated");
            self.auth = Some(user);
            self.reply("235 2.7.0 Authentication successful").await?;
            return Ok(false);
        }
        self.auth_failed(&user, "535 5.7.8 Authentication credentials invalid")
            .await
    }

    /// Count a failure, wait, and close the connection after too many. `true` ends the
    /// session.
    async fn auth_failed(&mut self, user: &str, reply: &str) -> Result<bool, &'static str> {
        self.auth_failures += 1;
        tracing::warn!(client = %self.peer.literal(), user = %escape(user), failures = self.auth_failures, "authentication failed");
        tokio::time::sleep(self.ctx.cfg.auth_failure_delay).await;
        if self.auth_failures >= self.ctx.cfg.max_auth_failures {
            self.refuse("421 4.7.0 Too many authentication failures")
                .await?;
            return Ok(true);
        }
        self.refuse(reply).await?;
        Ok(false)
    }
}
