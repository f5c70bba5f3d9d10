//! DATA and BDAT: the message into a spool stage, checked by [`DataReader`], then the
//! commit on a blocking thread. 250 is sent only after the commit returned.

use std::io::Write;

use mailspool_spool::{SpoolError, Staged};

use super::{Ended, Session, Tx};
use crate::data::{DataReader, Violation};

const FULL: &str = "452 4.3.1 Insufficient system storage, try again later";
const LOCAL: &str = "451 4.3.0 Local error in processing, try again later";

fn storage_reply(e: &SpoolError) -> &'static str {
    if e.is_full() { FULL } else { LOCAL }
}

fn io_reply(e: &std::io::Error) -> &'static str {
    if mailspool_spool::is_full(e) {
        FULL
    } else {
        LOCAL
    }
}

impl Session {
    /// A stage for the transaction, with the Received header already in it.
    fn open_stage(&self, tx: &Tx) -> Result<Box<dyn Staged>, &'static str> {
        if tx.report_for.is_some() {
            return Ok(Box::new(super::report::ReportStage::new(&tx.id)));
        }
        let mut stage = self.ctx.spool.clone().stage(&tx.id).map_err(|e| {
            tracing::error!(error = %e, "cannot stage a message");
            storage_reply(&e)
        })?;
        stage
            .write_all(self.received(&tx.id, &tx.rcpts).as_bytes())
            .map_err(|e| io_reply(&e))?;
        Ok(stage)
    }

    pub(super) async fn data(&mut self) -> Ended {
        let Some(tx) = self.tx.as_ref() else {
            return self.refuse("503 5.5.1 Need MAIL before DATA").await;
        };
        if tx.rcpts.is_empty() {
            return self.refuse("554 5.5.1 No valid recipients").await;
        }
        if tx.bdat.is_some() || tx.bdat_failed.is_some() {
            return self.refuse("503 5.5.1 DATA after BDAT").await;
        }
        // Stage first: a full disk is said before the client sends the message.
        let mut stage = match self.open_stage(tx) {
            Ok(s) => s,
            Err(reply) => {
                // The transaction is over; the client starts again with MAIL.
                self.tx = None;
                return self.refuse(reply).await;
            }
        };
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let mut reader = DataReader::data(self.ctx.cfg.max_message_size);
        let mut out = Vec::with_capacity(64 * 1024);
        let mut failed: Option<&'static str> = None;
        loop {
            if !self.rbuf.is_empty() {
                let used = reader.feed(&self.rbuf, &mut out);
                self.rbuf.drain(..used);
                if failed.is_none() && reader.violation().is_none() && !out.is_empty() {
                    failed = stage.write_all(&out).err().map(|e| io_reply(&e));
                }
                out.clear();
                if reader.done() {
                    break;
                }
            }
            // Dropping the stage on the way out removes it: nothing partial is kept.
            if self.fill().await? == 0 {
                return Err("client closed during DATA");
            }
        }
        let tx = self.tx.take().expect("checked above");
        self.finish(tx, stage, reader.violation(), failed).await
    }

    pub(super) async fn bdat(&mut self, size: usize, last: bool) -> Ended {
        let mut problem: Option<&'static str> = match &self.tx {
            None => Some("503 5.5.1 Need MAIL before BDAT"),
            Some(tx) if tx.rcpts.is_empty() => Some("554 5.5.1 No valid recipients"),
            Some(tx) => tx.bdat_failed,
        };
        if problem.is_none() && (size as u64) > self.ctx.cfg.max_message_size {
            problem = Some(Violation::TooLarge.reply());
        }
        if problem.is_none()
            && let Some(tx) = &self.tx
            && tx.bdat.is_none()
        {
            match self.open_stage(tx) {
                Ok(stage) => {
                    let reader = DataReader::bdat(self.ctx.cfg.max_message_size);
                    self.tx.as_mut().expect("checked").bdat = Some((stage, reader));
                }
                Err(reply) => problem = Some(reply),
            }
        }
        // The chunk is read whatever the answer, to stay in step with the client.
        let mut remaining = size;
        let mut out = Vec::with_capacity(64 * 1024);
        while remaining > 0 {
            if self.rbuf.is_empty() && self.fill().await? == 0 {
                return Err("client closed during BDAT");
            }
            let n = remaining.min(self.rbuf.len());
            if problem.is_none()
                && let Some(Some((stage, reader))) = self.tx.as_mut().map(|t| t.bdat.as_mut())
            {
                reader.feed(&self.rbuf[..n], &mut out);
                if reader.violation().is_none()
                    && !out.is_empty()
                    && let Err(e) = stage.write_all(&out)
                {
                    problem = Some(io_reply(&e));
                }
                out.clear();
            }
            self.rbuf.drain(..n);
            remaining -= n;
        }
        if let Some(reply) = problem {
            if let Some(tx) = &mut self.tx {
                tx.bdat = None;
                tx.bdat_failed = Some(reply);
            }
            if last {
                self.tx = None;
            }
            return self.refuse(reply).await;
        }
        if !last {
            let r = format!("250 2.0.0 {size} bytes received");
            return self.reply(&r).await;
        }
        let mut tx = self.tx.take().expect("checked above");
        let (stage, mut reader) = tx.bdat.take().expect("opened above");
        reader.finish();
        self.finish(tx, stage, reader.violation(), None).await
    }

    /// Refuse, or commit and say 250.
    async fn finish(
        &mut self,
        tx: Tx,
        stage: Box<dyn Staged>,
        violation: Option<Violation>,
        failed: Option<&'static str>,
    ) -> Ended {
        if let Some(v) = violation {
            drop(stage);
            return self.refuse(v.reply()).await;
        }
        if let Some(reply) = failed {
            drop(stage);
            return self.refuse(reply).await;
        }
        if let Some(id) = tx.report_for.clone() {
            return self.take_report(id, stage).await;
        }
        let (from, rcpts) = (tx.from.clone(), tx.rcpts.clone());
        let commit = move || {
            let size = stage.written();
            stage.commit(&from, &rcpts).map(|c| (c, size))
        };
        // The fsyncs block: on the multi-threaded runtime, in place (no hand-off to
        // another thread, which is most of a sequential client's wait); elsewhere on the
        // blocking pool.
        let committed = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => Ok(tokio::task::block_in_place(commit)),
            _ => tokio::task::spawn_blocking(commit).await,
        };
        match committed {
            Ok(Ok((c, size))) => {
                self.accepted += 1;
                mailspool_metrics::global().accepted("smtp");
                tracing::info!(
                    event = "accepted",
                    client = %self.peer.literal(),
                    user = self.auth.as_deref().unwrap_or("-"),
                    id = %c.id,
                    size,
                    from = %mailspool_spool::escape(&tx.from),
                    to = ?tx.rcpts,
                    "accepted"
                );
                let submitter = match &self.auth {
                    Some(user) => format!(
                        "{} (AUTH {})",
                        self.peer.literal(),
                        mailspool_spool::escape(user)
                    ),
                    None => self.peer.literal().to_string(),
                };
                let events: Vec<mailspool_events::Event> = tx
                    .rcpts
                    .iter()
                    .map(|to| {
                        let mut e = mailspool_events::Event::new(
                            mailspool_events::Kind::Accepted,
                            &c.id,
                            &tx.from,
                            to,
                        );
                        e.source = Some("smtp".into());
                        e.submitter = Some(submitter.clone());
                        e
                    })
                    .collect();
                let _ = mailspool_spool::store::emit(&*self.ctx.spool, &events, false);
                let r = format!("250 2.0.0 Ok: queued as {}", c.id);
                self.reply(&r).await
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "commit failed");
                self.refuse(storage_reply(&e)).await
            }
            Err(_) => self.refuse(LOCAL).await,
        }
    }
}
