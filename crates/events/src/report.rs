//! Reports that come back as mail, after a remote server accepted a message: delivery
//! status notifications (RFC 3464 `multipart/report; report-type=delivery-status`, and
//! the plain-text bounces some MTAs still send) and feedback-loop complaints (ARF,
//! RFC 5965 `report-type=feedback-report`). MIME is parsed by mail-parser; the fields
//! of the report parts (header syntax, one block per recipient) here.
//!
//! A report says things about recipients; the caller keeps only those of the message
//! the report is tied to (the signed return path), so a forged report can say nothing
//! about anyone else.

use mail_parser::{MessageParser, MimeHeaders};

/// What a report says happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What kind of report it is.
    pub kind: ReportKind,
    /// The recipient it is about (lowercased), when it names one.
    pub recipient: Option<String>,
    /// The enhanced status (`5.1.1`), when given.
    pub status: Option<String>,
    /// The remote server's reply, or the complaint's type (`abuse`).
    pub diagnostic: String,
    /// The server that refused (`Remote-MTA`), when given.
    pub remote_mta: Option<String>,
}

/// The kinds of report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// Refused for good (`Action: failed`).
    Failed,
    /// Still trying (`Action: delayed`): no event of ours follows from it.
    Delayed,
    /// The recipient complained (ARF).
    Complaint,
}

/// Longest report read: a bounce quotes at most the original's headers, or a part of it.
pub const MAX_REPORT: usize = 1 << 20;

/// The reports a message carries (none: it is not a report we can read).
pub fn parse(raw: &[u8]) -> Vec<Report> {
    let raw = &raw[..raw.len().min(MAX_REPORT)];
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut embedded_to: Option<String> = None;
    for part in &msg.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let sub = ct.subtype().unwrap_or_default().to_ascii_lowercase();
        match (ct.ctype().to_ascii_lowercase().as_str(), sub.as_str()) {
            ("message", "delivery-status") | ("message", "global-delivery-status") => {
                out.extend(delivery_status(part.contents()));
            }
            ("message", "feedback-report") => {
                out.push(feedback(part.contents()));
            }
            ("message", "rfc822") | ("text", "rfc822-headers") | ("message", "rfc822-headers") => {
                // The original's To, for a complaint that names no recipient.
                let head = part.contents();
                embedded_to = field_blocks(head)
                    .first()
                    .and_then(|b| value(b, "to"))
                    .and_then(|t| first_address(&t));
            }
            _ => {}
        }
    }
    // The human part says why when the fields do not (Exim: "gone@x\n    Unrouteable
    // address", with Status 5.0.0 and no Diagnostic-Code).
    let human: String = (0..msg.text_body.len())
        .filter_map(|i| msg.body_text(i))
        .collect::<Vec<_>>()
        .join("\n");
    for r in &mut out {
        if r.kind == ReportKind::Complaint && r.recipient.is_none() {
            r.recipient = embedded_to.clone();
        }
        if r.diagnostic.starts_with("Action: ")
            && let Some(why) = r
                .recipient
                .as_deref()
                .and_then(|to| reason_near(&human, to))
        {
            r.diagnostic = why;
        }
    }
    if out.is_empty() {
        out.extend(plain_text(&msg));
    }
    out
}

/// The line after the one naming `to` in a bounce's text, when it says something.
fn reason_near(text: &str, to: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.to_ascii_lowercase().contains(&to.to_ascii_lowercase()))?;
    lines[at + 1..]
        .iter()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .filter(|l| !l.contains('@') && l.len() <= crate::MAX_REPLY)
        .map(str::to_owned)
}

/// Blocks of header-syntax fields separated by blank lines, each as (lowercased name,
/// unfolded value).
fn field_blocks(text: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(text);
    let mut blocks = Vec::new();
    let mut block: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = block.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            block.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

fn value(block: &[(String, String)], name: &str) -> Option<String> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// `rfc822; user@example.com` (or `<user@example.com>`) gives `user@example.com`.
fn typed_address(v: &str) -> Option<String> {
    let v = v.split_once(';').map_or(v, |(_, a)| a).trim();
    first_address(v).or_else(|| v.contains('@').then(|| v.to_lowercase()))
}

/// The first `<...@...>` or bare `x@y` in a text, lowercased.
fn first_address(text: &str) -> Option<String> {
    if let Some(start) = text.find('<')
        && let Some(len) = text[start + 1..].find('>')
    {
        let a = &text[start + 1..start + 1 + len];
        if a.contains('@') && !a.contains(char::is_whitespace) {
            return Some(a.to_lowercase());
        }
    }
    text.split(|c: char| c.is_whitespace() || "<>,;\"'()[]".contains(c))
        .find(|w| {
            let w = w.trim_end_matches(['.', ':']);
            w.contains('@') && !w.starts_with('@') && !w.ends_with('@')
        })
        .map(|w| w.trim_end_matches(['.', ':']).to_lowercase())
}

/// An enhanced status code in a text (`5.1.1`), the first one.
fn status_in(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|w| {
            let p: Vec<&str> = w.split('.').collect();
            p.len() == 3
                && matches!(p[0], "2" | "4" | "5")
                && p[1..].iter().all(|x| (1..=3).contains(&x.len()))
        })
        .map(str::to_owned)
}

fn delivery_status(body: &[u8]) -> Vec<Report> {
    let blocks = field_blocks(body);
    // The first block is about the message (Reporting-MTA ...); the others each about
    // one recipient.
    blocks
        .iter()
        .skip(1)
        .filter_map(|b| {
            let action = value(b, "action")?.to_ascii_lowercase();
            let what = match action.split_whitespace().next()? {
                "failed" => ReportKind::Failed,
                "delayed" => ReportKind::Delayed,
                _ => return None,
            };
            let recipient = value(b, "final-recipient")
                .or_else(|| value(b, "original-recipient"))
                .and_then(|v| typed_address(&v));
            let diagnostic = value(b, "diagnostic-code")
                .map(|d| {
                    d.split_once(';')
                        .map_or(d.clone(), |(_, t)| t.trim().to_owned())
                })
                .unwrap_or_else(|| format!("Action: {action}"));
            Some(Report {
                kind: what,
                recipient,
                status: value(b, "status").and_then(|s| status_in(&s)),
                diagnostic,
                remote_mta: value(b, "remote-mta").map(|m| {
                    m.split_once(';')
                        .map_or(m.clone(), |(_, h)| h.trim().to_owned())
                }),
            })
        })
        .collect()
}

fn feedback(body: &[u8]) -> Report {
    let blocks = field_blocks(body);
    let b = blocks.first().cloned().unwrap_or_default();
    Report {
        kind: ReportKind::Complaint,
        recipient: value(&b, "original-rcpt-to").and_then(|v| typed_address(&v)),
        status: None,
        diagnostic: value(&b, "feedback-type").unwrap_or_else(|| "abuse".into()),
        remote_mta: value(&b, "reporting-mta").map(|m| {
            m.split_once(';')
                .map_or(m.clone(), |(_, h)| h.trim().to_owned())
        }),
    }
}

/// A bounce without a delivery-status part (qmail, old Exim, some appliances): each
/// address of the text with the first failure reply or status found near it.
fn plain_text(msg: &mail_parser::Message<'_>) -> Vec<Report> {
    let text: String = (0..msg.text_body.len())
        .filter_map(|i| msg.body_text(i))
        .collect::<Vec<_>>()
        .join("\n");
    let lower = text.to_ascii_lowercase();
    let looks_like_bounce = [
        "undeliver",
        "delivery has failed",
        "could not be delivered",
        "failure notice",
        "returned mail",
        "delivery status notification",
        "permanent error",
        "permanent fatal errors",
    ]
    .iter()
    .any(|w| lower.contains(w))
        || msg.subject().is_some_and(|s| {
            ["undeliver", "failure", "returned mail", "delivery status"]
                .iter()
                .any(|w| s.to_ascii_lowercase().contains(w))
        });
    if !looks_like_bounce {
        return Vec::new();
    }
    // Stop at the quoted original: its To and From are not what bounced.
    let cut = [
        "------ this is a copy of the message",
        "--- below this line is a copy of the message",
        "original message follows",
        "----- original message -----",
    ]
    .iter()
    .filter_map(|m| lower.find(m))
    .min()
    .unwrap_or(text.len());
    let text = &text[..cut];
    let mut out: Vec<Report> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(addr) = first_address(line) else {
            continue;
        };
        if out.iter().any(|r| r.recipient.as_deref() == Some(&addr)) {
            continue;
        }
        // The reply that goes with it: on its line or the next few.
        let near = lines[i..lines.len().min(i + 4)].join(" ");
        let reply = near
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .position(|w| {
                w[0].len() == 3 && w[0].starts_with('5') && w[0].bytes().all(|b| b.is_ascii_digit())
            })
            .map(|p| {
                near.split_whitespace()
                    .skip(p)
                    .collect::<Vec<_>>()
                    .join(" ")
            });
        let status = status_in(&near).filter(|s| s.starts_with('5'));
        if reply.is_none() && status.is_none() {
            continue;
        }
        out.push(Report {
            kind: ReportKind::Failed,
            recipient: Some(addr),
            status,
            diagnostic: reply
                .unwrap_or_else(|| line.trim().to_owned())
                .chars()
                .take(crate::MAX_REPLY)
                .collect(),
            remote_mta: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTFIX: &str = "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
To: bounces+01ABC.x@bounce.example.com\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\
\tboundary=\"B1\"\r\n\
\r\n\
--B1\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
This is the mail system at host mx.example.net.\r\n\
\r\n\
<gone@example.net>: unknown user: \"gone\"\r\n\
\r\n\
--B1\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.net\r\n\
X-Postfix-Queue-ID: 4ABC\r\n\
\r\n\
Final-Recipient: rfc822; gone@example.net\r\n\
Original-Recipient: rfc822;gone@example.net\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Remote-MTA: dns; mailbox.example.net\r\n\
Diagnostic-Code: x-unix; unknown user: \"gone\"\r\n\
\r\n\
Final-Recipient: rfc822; Full@Example.net\r\n\
Action: delayed\r\n\
Status: 4.2.2\r\n\
\r\n\
--B1\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: app@shop.example\r\n\
To: gone@example.net\r\n\
\r\n\
--B1--\r\n";

    #[test]
    fn a_delivery_status_notification_says_who_failed_and_why() {
        let r = parse(POSTFIX.as_bytes());
        assert_eq!(r.len(), 2, "{r:#?}");
        assert_eq!(r[0].kind, ReportKind::Failed);
        assert_eq!(r[0].recipient.as_deref(), Some("gone@example.net"));
        assert_eq!(r[0].status.as_deref(), Some("5.1.1"));
        assert_eq!(r[0].diagnostic, "unknown user: \"gone\"");
        assert_eq!(r[0].remote_mta.as_deref(), Some("mailbox.example.net"));
        assert_eq!(
            (r[1].kind, r[1].recipient.as_deref()),
            (ReportKind::Delayed, Some("full@example.net"))
        );
    }

    #[test]
    fn an_exim_dsn_without_a_diagnostic_takes_the_reason_from_its_text() {
        let exim = "From: Mail Delivery System <Mailer-Daemon@vm>\r\nTo: x@bounce.test\r\n\
Subject: Mail delivery failed: returning message to sender\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=E\r\n\r\n\
--E\r\nContent-type: text/plain; charset=us-ascii\r\n\r\n\
This message was created automatically by mail delivery software.\r\n\r\n\
A message that you sent could not be delivered to one or more of its\r\n\
recipients. This is a permanent error. The following address(es) failed:\r\n\r\n\
  gone@one.test\r\n    Unrouteable address\r\n\r\n\
--E\r\nContent-type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; vm\r\n\r\nAction: failed\r\nFinal-Recipient: rfc822;gone@one.test\r\n\
Status: 5.0.0\r\n\r\n--E--\r\n";
        let r = parse(exim.as_bytes());
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(r[0].diagnostic, "Unrouteable address");
        assert_eq!(r[0].status.as_deref(), Some("5.0.0"));
        let rules = crate::Rules::default();
        assert_eq!(
            rules.classify("5.0.0 Unrouteable address", Some("5.0.0")),
            crate::Class::InvalidRecipient
        );
    }

    #[test]
    fn an_arf_complaint_names_its_recipient() {
        let arf = "From: fbl@provider.example\r\nSubject: FW: hi\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"A\"\r\n\r\n\
--A\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\
--A\r\nContent-Type: message/feedback-report\r\n\r\n\
Feedback-Type: abuse\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n\
Reporting-MTA: dns; fbl.provider.example\r\n\r\n\
--A\r\nContent-Type: message/rfc822\r\n\r\n\
From: app@shop.example\r\nTo: Carol <Carol@Example.org>\r\nSubject: hi\r\n\r\nbody\r\n\
--A--\r\n";
        let r = parse(arf.as_bytes());
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(r[0].kind, ReportKind::Complaint);
        assert_eq!(r[0].recipient.as_deref(), Some("carol@example.org"));
        assert_eq!(r[0].diagnostic, "abuse");
    }

    #[test]
    fn a_plain_text_bounce_is_read_up_to_the_quoted_original() {
        let qmail = "From: MAILER-DAEMON@old.example\r\nSubject: failure notice\r\n\r\n\
Hi. This is the qmail-send program at old.example.\r\n\
I'm afraid I wasn't able to deliver your message to the following addresses.\r\n\
This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n\
<nobody@old.example>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n\r\n\
--- Below this line is a copy of the message.\r\n\r\nTo: other@old.example\r\n";
        let r = parse(qmail.as_bytes());
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(r[0].recipient.as_deref(), Some("nobody@old.example"));
        assert_eq!(r[0].status.as_deref(), Some("5.1.1"));
        // Not a report at all.
        assert!(parse(b"From: a@b\r\nSubject: hello\r\n\r\nsee you at <x@y> 550\r\n").is_empty());
        assert!(parse(b"").is_empty());
    }
}
