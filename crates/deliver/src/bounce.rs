//! Bounces: RFC 3464 delivery status notifications, spooled like any message from the
//! null sender (so a bounce is never bounced), never sent inline.
//!
//! A DSN has three parts: a readable explanation, `message/delivery-status` (Reporting-
//! MTA, then per recipient Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code),
//! and the original headers as `text/rfc822-headers`, capped in size.

use std::io::{BufRead, BufReader, Read, Write};

use std::sync::Arc;

use mailspool_spool::time::rfc5322_date;
use mailspool_spool::{SpoolError, Store, now};

/// Why one recipient failed for good.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The recipient.
    pub recipient: String,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    /// The server that said so, if any.
    pub remote_mta: Option<String>,
    /// What it said (or our own explanation).
    pub diagnostic: String,
    /// Whether the text is an SMTP reply (`smtp;`) or ours (`x-mailspool;`).
    pub from_smtp: bool,
}

/// Reads a file from its start through `pread`, whatever its descriptor's offset (a
/// node's descriptor is shared: never move its offset).
pub(crate) struct ReadAt<'a> {
    pub(crate) file: &'a std::fs::File,
    pub(crate) at: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// The headers of the original message (an open node), at most `max` bytes, cut at a
/// line end.
fn original_headers(node: &std::fs::File, max: usize) -> Vec<u8> {
    let mut reader = BufReader::new(ReadAt { file: node, at: 0 }.take(max as u64));
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == b"\n" => break,
            Ok(_) if !line.ends_with(b"\n") => break,
            Ok(_) => out.extend_from_slice(&line),
        }
    }
    out
}

/// What a delivery status notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The recipients failed for good (a bounce).
    Failed,
    /// The recipients are still being tried (RFC 3464 `Action: delayed`), at the latest
    /// until this unix time.
    Delayed {
        /// Unix time of arrival.
        arrived: u64,
        /// Unix time after which the message is returned.
        until: u64,
    },
}

/// What [`spool_dsn`] did.
#[derive(Debug, Default)]
pub struct Spooled {
    /// The DSN's id (none for the null sender).
    pub id: Option<String>,
    /// Whether the nodes it replaces were removed in the same commit (else the caller
    /// removes them now).
    pub replaced: bool,
}

/// Queue a DSN of `report` for `failures` to `sender` (never to the null sender),
/// quoting the original's headers; `replaced`, the locked nodes it reports as failed, go
/// in the same commit where the back end can (see [`mailspool_spool::Staged`]).
#[allow(clippy::too_many_arguments)]
pub fn spool_dsn(
    spool: &Arc<dyn Store>,
    hostname: &str,
    sender: &str,
    id: &str,
    node: &std::fs::File,
    failures: &[Failure],
    max_headers: usize,
    report: Report,
    replaced: &[mailspool_spool::NodeEntry],
) -> Result<Spooled, SpoolError> {
    if sender.is_empty() || failures.is_empty() {
        return Ok(Spooled::default());
    }
    let delayed = matches!(report, Report::Delayed { .. });
    let bounce_id = spool.new_id();
    let boundary = format!("{bounce_id}/{hostname}");
    let date = rfc5322_date(now());
    let (subject, lead) = match report {
        Report::Failed => (
            "Undelivered Mail Returned to Sender".to_owned(),
            "I'm sorry to have to inform you that your message could not\n\
             be delivered to one or more recipients. The reasons are below.\n"
                .to_owned(),
        ),
        Report::Delayed { arrived, until } => (
            "Delayed Mail (still being retried)".to_owned(),
            format!(
                "This is a warning only: you do not need to send your message again.\n\
                 \n\
                 Your message could not be delivered for {} hours to the recipients\n\
                 below. It will be retried until {} (UTC); only then, if it is\n\
                 still not delivered, will it be returned.\n",
                now().saturating_sub(arrived) / 3600,
                rfc5322_date(until)
            ),
        ),
    };
    let mut m = String::new();
    m.push_str(&format!(
        "From: MAILER-DAEMON@{hostname} (Mail Delivery System)\n\
         To: <{sender}>\n\
         Subject: {subject}\n\
         Date: {date}\n\
         Message-ID: <{bounce_id}@{hostname}>\n\
         Auto-Submitted: auto-replied\n\
         MIME-Version: 1.0\n\
         Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{boundary}\"\n\
         \n\
         This is a MIME-encapsulated message.\n\
         \n\
         --{boundary}\n\
         Content-Description: Notification\n\
         Content-Type: text/plain; charset=utf-8\n\
         \n\
         This is the mail system at host {hostname}.\n\
         \n\
         {lead}\
         \n"
    ));
    for f in failures {
        m.push_str(&format!("<{}>: {}\n", f.recipient, one_line(&f.diagnostic)));
    }
    m.push_str(&format!(
        "\n--{boundary}\n\
         Content-Description: Delivery report\n\
         Content-Type: message/delivery-status\n\
         \n\
         Reporting-MTA: dns; {hostname}\n\
         X-Mailspool-Queue-ID: {id}\n\
         Arrival-Date: {date}\n"
    ));
    for f in failures {
        m.push_str(&format!(
            "\nFinal-Recipient: rfc822; {}\nAction: {}\nStatus: {}\n",
            f.recipient,
            if delayed { "delayed" } else { "failed" },
            f.status
        ));
        if let Report::Delayed { until, .. } = report {
            m.push_str(&format!("Will-Retry-Until: {}\n", rfc5322_date(until)));
        }
        if let Some(mta) = &f.remote_mta {
            m.push_str(&format!("Remote-MTA: dns; {mta}\n"));
        }
        let kind = if f.from_smtp { "smtp" } else { "x-mailspool" };
        m.push_str(&format!(
            "Diagnostic-Code: {kind}; {}\n",
            one_line(&f.diagnostic)
        ));
    }
    m.push_str(&format!(
        "\n--{boundary}\n\
         Content-Description: Undelivered Message Headers\n\
         Content-Type: text/rfc822-headers\n\
         \n"
    ));
    let mut stage = spool.clone().stage(&bounce_id)?;
    let io = |e| SpoolError::Io {
        op: "write",
        path: "a bounce's stage".into(),
        source: e,
    };
    stage.write_all(m.as_bytes()).map_err(io)?;
    stage
        .write_all(&original_headers(node, max_headers))
        .map_err(io)?;
    stage
        .write_all(format!("\n--{boundary}--\n").as_bytes())
        .map_err(io)?;
    let (committed, replaced) = stage.commit_replacing("", &[sender.to_owned()], replaced)?;
    if delayed {
        mailspool_metrics::global().delay_warnings.inc();
        tracing::info!(event = "delay warned", id = %id, report = %committed.id, to = %mailspool_spool::escape(sender), "delay warning queued");
    } else {
        mailspool_metrics::global().bounce_reports.inc();
        tracing::info!(event = "bounced", id = %id, bounce = %committed.id, to = %mailspool_spool::escape(sender), "bounce queued");
    }
    Ok(Spooled {
        id: Some(committed.id),
        replaced,
    })
}

fn one_line(s: &str) -> String {
    s.split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
