//! The dashboard's view of the history: a message's events on its page (also once it
//! is delivered and gone from the queue), and events found by the search box.

use std::fmt::Write;

use mailspool_events::{Event, Query};

use super::page::{esc, message_link};

/// Most events a page shows.
const MAX_SHOWN: usize = 500;

/// The events about `key` (a message id, a Message-ID or an address), oldest first, at
/// most [`MAX_SHOWN`]; none when the history cannot be read (said in the log).
pub fn find(spool: &dyn mailspool::Store, key: &str) -> Vec<Event> {
    let mut q = Query {
        key: Some(key.trim().to_owned()),
        limit: mailspool_events::MAX_PAGE,
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        match spool.read_events(&q) {
            Ok(page) => {
                out.extend(page.events);
                if !page.more || out.len() >= MAX_SHOWN {
                    out.truncate(MAX_SHOWN);
                    return out;
                }
                q.cursor = page.next;
            }
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: cannot read the history");
                return out;
            }
        }
    }
}

/// What an event says beyond its kind: where it went, over what, and the reply.
fn detail(e: &Event) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(s) = &e.source {
        parts.push(format!("via {}", esc(s)));
    }
    if let Some(who) = e.submitter.as_deref().or(e.by.as_deref()) {
        parts.push(format!("by {}", esc(who)));
    }
    if let Some(mx) = &e.mx {
        let addr = e
            .address
            .as_deref()
            .map(|a| format!(" [{}]", esc(a)))
            .unwrap_or_default();
        parts.push(format!("<span class=\"mono\">{}</span>{addr}", esc(mx)));
    }
    if let Some(t) = &e.tls {
        parts.push(format!("{} {}", esc(&t.version), esc(&t.cipher)));
    }
    if let Some(p) = &e.tls_policy {
        parts.push(format!("policy {}", esc(p)));
    }
    if let Some(c) = e.class {
        parts.push(format!(
            "<strong class=\"class\">{}</strong>",
            esc(c.as_str())
        ));
    }
    if let Some(t) = e.next_attempt {
        parts.push(format!(
            "next try {} UTC",
            mailspool_spool::time::utc_time(t)
        ));
    }
    if let Some(r) = &e.reply {
        parts.push(format!("<span class=\"reply\">{}</span>", esc(r)));
    }
    parts.join("; ")
}

/// A table of events; `messages`: with a column linking each event's message.
pub fn table(s: &mut String, events: &[Event], messages: bool) {
    let _ = write!(
        s,
        "<div class=\"scroll\"><table id=\"events\"><thead><tr><th>When (UTC)</th><th>Event</th>{}\
         <th>Recipient</th><th>Detail</th></tr></thead><tbody>",
        if messages { "<th>Message</th>" } else { "" }
    );
    for e in events {
        let _ = write!(
            s,
            "<tr class=\"event ev-{kind}\" data-type=\"{kind}\"><td class=\"num\">{}</td><td>{kind}</td>{}\
             <td class=\"mono\">&lt;{}&gt;</td><td>{}</td></tr>",
            mailspool_spool::time::utc_time(e.time),
            if messages {
                format!(
                    "<td>{}</td>",
                    if e.message.is_empty() {
                        "-".into()
                    } else {
                        message_link(&e.message)
                    }
                )
            } else {
                String::new()
            },
            esc(&e.recipient),
            detail(e),
            kind = e.kind.as_str(),
        );
    }
    s.push_str("</tbody></table></div>");
}

/// The history section of a page.
pub fn section(s: &mut String, title: &str, events: &[Event], messages: bool) {
    let _ = write!(
        s,
        "<section class=\"wide\" id=\"history\"><h2>{}</h2>",
        esc(title)
    );
    if events.is_empty() {
        s.push_str("<p class=\"muted\" id=\"no-history\">No events kept.</p>");
    } else {
        table(s, events, messages);
    }
    s.push_str("</section>");
}
