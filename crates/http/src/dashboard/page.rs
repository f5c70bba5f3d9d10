//! The dashboard's HTML. Everything that came from mail (addresses, ids, replies) is
//! escaped where it is written; charts are inline SVG drawn here.

use std::fmt::Write;
use std::sync::Arc;

use mailspool_metrics::Minute;

use crate::admin::{NodeBrief, Summary};
use crate::auth::Caller;
use crate::tokens::Scope;

/// What the dashboard page shows.
pub struct View<'a> {
    pub hostname: &'a str,
    pub caller: &'a Caller,
    pub snapshot: Option<Arc<(Summary, u64)>>,
    pub hour: Vec<Minute>,
    pub search: Option<&'a str>,
    /// Search results (node JSON) and whether there were more, or why it failed.
    pub results: Result<(Vec<serde_json::Value>, bool), String>,
    /// Events the search found in the history.
    pub history: Vec<mailspool_events::Event>,
    pub done: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// HTML-escape text for an element or a quoted attribute.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/ui/style.css\">\
         <script src=\"/ui/app.js\" defer></script></head><body>",
        esc(title)
    )
}

/// The login form.
pub fn login(error: Option<&str>) -> String {
    let mut s = head("mailspool: sign in");
    s.push_str("<main><section class=\"login\"><h1>mailspool</h1>");
    if let Some(e) = error {
        let _ = write!(s, "<p class=\"flash err\" role=\"alert\">{}</p>", esc(e));
    }
    s.push_str(
        "<form method=\"post\" action=\"/login\">\
         <p><label for=\"token\">API token (read or admin scope)</label><br>\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"off\" required autofocus></p>\
         <p><button class=\"primary\" type=\"submit\" id=\"sign-in\">Sign in</button></p>\
         <p class=\"muted\">Make one with <code>mailspool token add NAME --scope read</code>.</p>\
         </form></section></main></body></html>",
    );
    s
}

fn ago(now: u64, t: u64) -> String {
    let d = now.saturating_sub(t);
    match d {
        0..=59 => format!("{d}s"),
        60..=3599 => format!("{}m", d / 60),
        3600..=86_399 => format!("{}h{:02}m", d / 3600, d / 60 % 60),
        _ => format!("{}d{:02}h", d / 86_400, d / 3600 % 24),
    }
}

/// A message row's buttons (admin only): hold/release, retry, delete. After the change
/// the browser comes back to the search `q`, or to the message's page when `on_page`.
fn buttons(s: &mut String, v: &View, id: &str, to: &str, held: bool) {
    action_buttons(s, v.caller, v.search.unwrap_or(""), false, id, to, held);
}

fn action_buttons(
    s: &mut String,
    caller: &Caller,
    q: &str,
    on_page: bool,
    id: &str,
    to: &str,
    held: bool,
) {
    if caller.scope != Scope::Admin {
        return;
    }
    let csrf = esc(caller.csrf.as_deref().unwrap_or(""));
    let q = esc(q);
    let back = if on_page { "message" } else { "" };
    s.push_str("<div class=\"actions\">");
    let actions: &[(&str, &str, &str)] = if held {
        &[("release", "Release", ""), ("delete", "Delete", "danger")]
    } else {
        &[
            ("hold", "Hold", ""),
            ("retry", "Retry now", ""),
            ("delete", "Delete", "danger"),
        ]
    };
    for (action, label, class) in actions {
        let confirm = format!("{label} the message {id} for <{to}>?");
        let _ = write!(
            s,
            "<form class=\"inline\" method=\"post\" action=\"/ui/action\" data-confirm=\"{}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"action\" value=\"{action}\">\
             <input type=\"hidden\" name=\"id\" value=\"{}\">\
             <input type=\"hidden\" name=\"to\" value=\"{}\">\
             <input type=\"hidden\" name=\"q\" value=\"{q}\">\
             <input type=\"hidden\" name=\"back\" value=\"{back}\">\
             <button type=\"submit\" class=\"{class}\" data-action=\"{action}\" \
             aria-label=\"{label} {}\">{label}</button></form>",
            esc(&confirm),
            esc(id),
            esc(to),
            esc(&format!("{id} to {to}")),
        );
    }
    s.push_str("</div>");
}

/// A message id as a link to its page.
pub(super) fn message_link(id: &str) -> String {
    format!(
        "<a class=\"mono\" href=\"/ui/message/{}\">{}</a>",
        esc(&percent(id)),
        esc(id)
    )
}

/// Percent-encode a path segment (ids are plain, but nothing from the spool is trusted).
pub fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~+=".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What the message page shows: one message's envelope, headers, and each recipient's
/// attempts, with the actions an admin may take.
pub struct MessageView<'a> {
    pub hostname: &'a str,
    pub caller: &'a Caller,
    pub detail: Result<crate::admin::MessageDetail, String>,
    /// Its events (also once it is no longer queued).
    pub events: Vec<mailspool_events::Event>,
    pub id: &'a str,
    pub done: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// The message page.
pub fn message(v: &MessageView) -> String {
    let now = mailspool_spool::now();
    let mut s = head(&format!("{} on {}", v.id, v.hostname));
    top(&mut s, v.hostname, v.caller);
    flashes(&mut s, v.done, v.error);
    let d = match &v.detail {
        Ok(d) => d,
        Err(e) => {
            let _ = write!(
                s,
                "<section class=\"wide\"><h2>Message <span class=\"mono\">{}</span></h2>\
                 <p id=\"gone\">{}</p><p><a href=\"/\">Back to the dashboard</a></p></section>",
                esc(v.id),
                esc(e)
            );
            super::history::section(&mut s, "What happened", &v.events, false);
            s.push_str("</main></body></html>");
            return s;
        }
    };
    let size = d.nodes.first().map_or(0, |n| n.size);
    let _ = write!(
        s,
        "<section class=\"wide\" id=\"envelope\"><h2>Message <span class=\"mono\">{}</span></h2>\
         <table><tbody><tr><th>Sender</th><td class=\"mono\">&lt;{}&gt;</td></tr>\
         <tr><th>Recipients queued</th><td class=\"num\">{}</td></tr>\
         <tr><th>Size</th><td class=\"num\">{size} bytes</td></tr></tbody></table>\
         <p><a href=\"/\">Back to the dashboard</a></p></section>",
        esc(&d.id),
        esc(&d.from),
        d.nodes.len()
    );
    for n in &d.nodes {
        let _ = write!(
            s,
            "<section class=\"wide recipient\" data-to=\"{}\"><h2>To <span class=\"mono\">&lt;{}&gt;</span>{}</h2>\
             <p>Tier {}, in it for {}; {}{}</p>",
            esc(&n.to),
            esc(&n.to),
            if n.held {
                " <strong class=\"held\">held</strong>"
            } else {
                ""
            },
            n.tier,
            ago(now, n.queued_at),
            if n.held {
                "never delivered until released".to_owned()
            } else if n.due_at <= now {
                "due now".to_owned()
            } else {
                format!("due in {}", ago(n.due_at, now))
            },
            n.lock
                .as_deref()
                .map(|l| format!("; being delivered by {}", esc(l)))
                .unwrap_or_default()
        );
        action_buttons(&mut s, v.caller, "", true, &d.id, &n.to, n.held);
        if n.attempts.is_empty() {
            s.push_str("<p class=\"muted\">No attempt yet.</p>");
        } else {
            s.push_str(
                "<div class=\"scroll\"><table class=\"attempts\"><thead><tr><th>When (UTC)</th>\
                 <th>Host</th><th>Reply</th></tr></thead><tbody>",
            );
            for a in &n.attempts {
                let _ = write!(
                    s,
                    "<tr><td class=\"num\">{} <span class=\"muted\">({} ago)</span></td>\
                     <td class=\"mono\">{}</td><td class=\"reply\">{}{}</td></tr>",
                    mailspool_spool::time::utc_time(a.time),
                    ago(now, a.time),
                    esc(if a.host.is_empty() { "-" } else { &a.host }),
                    if a.delivered { "delivered: " } else { "" },
                    esc(&a.reply)
                );
            }
            s.push_str("</tbody></table></div>");
        }
        s.push_str("</section>");
    }
    super::history::section(&mut s, "What happened", &v.events, false);
    s.push_str("<section class=\"wide\"><h2>Headers</h2><pre class=\"headers\">");
    for h in &d.headers {
        s.push_str(&esc(h));
        s.push('\n');
    }
    s.push_str("</pre></section></main></body></html>");
    s
}

/// The page's header (the host, linking home; who is signed in; sign out) and the
/// start of its main part.
fn top(s: &mut String, hostname: &str, caller: &Caller) {
    let _ = write!(
        s,
        "<header><h1><a href=\"/\" class=\"home\">mailspool on {}</a></h1>\
         <span class=\"who\">signed in as {} ({})</span>\
         <form class=\"inline\" method=\"post\" action=\"/logout\"><button type=\"submit\">Sign out</button></form>\
         </header><main>",
        esc(hostname),
        esc(&caller.name),
        caller.scope.as_str()
    );
}

/// The result of the last action, once.
fn flashes(s: &mut String, done: Option<&str>, error: Option<&str>) {
    if let Some(d) = done {
        let _ = write!(
            s,
            "<p class=\"flash\" role=\"status\" id=\"flash\">{}</p>",
            esc(d)
        );
    }
    if let Some(e) = error {
        let _ = write!(
            s,
            "<p class=\"flash err\" role=\"alert\" id=\"flash\">{}</p>",
            esc(e)
        );
    }
}

fn brief_table(s: &mut String, v: &View, title: &str, nodes: &[NodeBrief], now: u64) {
    let _ = write!(s, "<section class=\"wide\"><h2>{}</h2>", esc(title));
    if nodes.is_empty() {
        s.push_str("<p class=\"muted\">None.</p></section>");
        return;
    }
    s.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>Age</th><th>Tier</th><th>Message</th>\
         <th>Last reply</th></tr></thead><tbody>",
    );
    for n in nodes {
        let _ = write!(
            s,
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}{}</td><td>{}<br>\
             &lt;{}&gt; → &lt;{}&gt;",
            ago(now, n.accepted_at),
            n.tier,
            if n.held { " held" } else { "" },
            message_link(&n.id),
            esc(&n.from),
            esc(&n.to)
        );
        buttons(s, v, &n.id, &n.to, n.held);
        let _ = write!(
            s,
            "</td><td class=\"reply\">{}</td></tr>",
            esc(n.last_error.as_deref().unwrap_or("-"))
        );
    }
    s.push_str("</tbody></table></div></section>");
}

/// Bars per minute for the last hour: delivered (green), deferred (amber), failed
/// (red), and a line for accepted.
fn chart(s: &mut String, hour: &[Minute]) {
    let (w, h, pad) = (600.0f64, 160.0f64, 24.0f64);
    let max = hour
        .iter()
        .map(|m| (m.delivered + m.deferred + m.failed).max(m.accepted))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let bar = (w - pad) / hour.len().max(1) as f64;
    let y = |v: f64| h - pad - v / max * (h - 2.0 * pad);
    let _ = write!(
        s,
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-labelledby=\"chart-title\">\
         <title id=\"chart-title\">Deliveries, deferrals and failures per minute, last hour</title>\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{w}\" y2=\"{}\" stroke=\"#d9dde3\"/>\
         <text x=\"0\" y=\"{}\" font-size=\"10\" fill=\"#5b6470\">{}</text>\
         <text x=\"0\" y=\"{}\" font-size=\"10\" fill=\"#5b6470\">0</text>",
        h - pad,
        h - pad,
        pad,
        max as u64,
        h - pad
    );
    let mut line = String::new();
    for (i, m) in hour.iter().enumerate() {
        let x = pad + i as f64 * bar;
        let mut base = 0.0;
        for (value, colour) in [
            (m.delivered, "#1a7f37"),
            (m.deferred, "#b35900"),
            (m.failed, "#c62828"),
        ] {
            if value > 0 {
                let top = y(base + value as f64);
                let _ = write!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
                    (bar - 1.0).max(1.0),
                    y(base) - top
                );
                base += value as f64;
            }
        }
        let _ = write!(
            line,
            "{}{:.1},{:.1}",
            if i == 0 { "M" } else { " L" },
            x + bar / 2.0,
            y(m.accepted as f64)
        );
    }
    let _ = write!(
        s,
        "<path d=\"{line}\" fill=\"none\" stroke=\"#0b5cad\" stroke-width=\"1.5\"/>\
         <text x=\"{pad}\" y=\"{}\" font-size=\"10\" fill=\"#5b6470\">60 min ago</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#5b6470\" text-anchor=\"end\">now</text></svg>",
        h - 6.0,
        w,
        h - 6.0
    );
    let totals = hour.iter().fold((0, 0, 0, 0), |t, m| {
        (
            t.0 + m.accepted,
            t.1 + m.delivered,
            t.2 + m.deferred,
            t.3 + m.failed,
        )
    });
    let _ = write!(
        s,
        "<p class=\"legend\"><span><i class=\"c-acc\"></i>accepted {}</span>\
         <span><i class=\"c-ok\"></i>delivered {}</span>\
         <span><i class=\"c-def\"></i>deferred {}</span>\
         <span><i class=\"c-bad\"></i>failed {}</span></p>",
        totals.0, totals.1, totals.2, totals.3
    );
}

/// The dashboard.
pub fn dashboard(v: &View) -> String {
    let now = mailspool_spool::now();
    let mut s = head(&format!("mailspool on {}", v.hostname));
    top(&mut s, v.hostname, v.caller);
    flashes(&mut s, v.done, v.error);
    // What was set aside waits for a person (the sampler counts it).
    let corrupt = mailspool_metrics::global().corrupt_files.get();
    if corrupt > 0 {
        let _ = write!(
            s,
            "<p class=\"flash err\" role=\"alert\" id=\"corrupt\">{corrupt} file{} in corrupt/, never delivered: \
             <code>mailspool fsck</code> lists them</p>",
            if corrupt == 1 { "" } else { "s" }
        );
    }
    // Search.
    let _ = write!(
        s,
        "<section class=\"wide\"><h2><label for=\"q\">Find mail</label></h2>\
         <form method=\"get\" action=\"/\" role=\"search\">\
         <input type=\"search\" id=\"q\" name=\"q\" value=\"{}\" \
         placeholder=\"message id, recipient address, or domain\"> \
         <button type=\"submit\">Search</button></form>",
        esc(v.search.unwrap_or(""))
    );
    if let Some(q) = v.search {
        match &v.results {
            Err(e) => {
                let _ = write!(s, "<p class=\"flash err\">{}</p>", esc(e));
            }
            Ok((nodes, more)) if nodes.is_empty() && !more => {
                let _ = write!(
                    s,
                    "<p id=\"no-results\">Nothing queued matches {}.</p>",
                    esc(q)
                );
            }
            Ok((nodes, more)) => {
                s.push_str(
                    "<div class=\"scroll\"><table id=\"results\"><thead><tr><th>Message</th><th>Tier</th>\
                     <th>Queued</th><th>Last reply</th><th>Actions</th></tr></thead><tbody>",
                );
                for n in nodes {
                    let text = |k: &str| n[k].as_str().unwrap_or("").to_owned();
                    let held = n["held"].as_bool().unwrap_or(false);
                    let _ = write!(
                        s,
                        "<tr data-node=\"{}\"><td>{}<br>&lt;{}&gt; → &lt;{}&gt;</td>\
                         <td class=\"num\">{}{}</td><td class=\"num\">{} ago</td><td class=\"reply\">{}</td><td>",
                        esc(&text("node")),
                        message_link(&text("id")),
                        esc(&text("from")),
                        esc(&text("to")),
                        n["tier"],
                        if held {
                            " <strong class=\"held\">held</strong>"
                        } else {
                            ""
                        },
                        ago(now, n["queued_at"].as_u64().unwrap_or(now)),
                        esc(n["last_error"].as_str().unwrap_or("-")),
                    );
                    buttons(&mut s, v, &text("id"), &text("to"), held);
                    s.push_str("</td></tr>");
                }
                s.push_str("</tbody></table></div>");
                if *more {
                    s.push_str("<p class=\"muted\">More match; narrow the search.</p>");
                }
            }
        }
    }
    s.push_str("</section>");
    if v.search.is_some() && !v.history.is_empty() {
        super::history::section(&mut s, "History", &v.history, true);
    }
    // Throughput.
    s.push_str("<section class=\"wide\"><h2>Last hour</h2>");
    chart(&mut s, &v.hour);
    s.push_str("</section>");
    match &v.snapshot {
        None => s.push_str(
            "<section><h2>Queue</h2><p class=\"muted\">Counting the spool…</p></section>",
        ),
        Some(snap) => {
            let (sum, at) = (&snap.0, snap.1);
            let _ = write!(
                s,
                "<section><h2>Queue by tier</h2><p id=\"queue-total\">{} node(s) of {} message(s), {} held \
                 <span class=\"muted\">(counted {} ago)</span></p><div class=\"scroll\"><table>\
                 <thead><tr><th class=\"num\">Tier</th><th class=\"num\">Queued</th><th class=\"num\">Held</th>\
                 <th class=\"num\">Waits</th></tr></thead><tbody>",
                sum.nodes,
                sum.messages,
                sum.held,
                ago(now, at)
            );
            for t in &sum.tiers {
                let _ = write!(
                    s,
                    "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                    t.tier,
                    t.queued,
                    t.held,
                    ago(t.wait, 0)
                );
            }
            s.push_str("</tbody></table></div></section><section><h2>Queue by domain</h2>");
            if sum.domains.is_empty() {
                s.push_str("<p class=\"muted\">Empty.</p>");
            } else {
                s.push_str("<div class=\"scroll\"><table><thead><tr><th>Domain</th><th class=\"num\">Nodes</th></tr></thead><tbody>");
                for d in sum.domains.iter().take(15) {
                    let _ = write!(
                        s,
                        "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
                        esc(&d.domain),
                        d.nodes
                    );
                }
                s.push_str("</tbody></table></div>");
            }
            s.push_str("</section>");
            brief_table(&mut s, v, "Oldest messages", &sum.oldest_nodes, now);
            brief_table(&mut s, v, "Most deferred", &sum.most_deferred, now);
        }
    }
    s.push_str("</main></body></html>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(
            esc("<script>\"x\"&'y'\u{1b}"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;\\u{1b}"
        );
    }
}
