//! What both chaos tests send over SMTP: 20 messages a connection into `mailspool
//! serve` at the port `port` holds now (a restarted listener has a new one), each with
//! a unique token; the tokens of the messages answered 250 go into `acked`.
//! Include it with `#[path = "support/chaos_intake.rs"] mod chaos_intake;` next to
//! `mod common;` (the deliver tests' harness).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Send until `stop`; reconnects across the listener's deaths.
pub async fn smtp_intake(
    port: Arc<AtomicUsize>,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    serial: Arc<AtomicUsize>,
) {
    let connector = mailspool_smtp::TlsConnectors::new(None).unwrap();
    let settings = mailspool_smtp::ClientSettings {
        helo_name: "chaos.client".into(),
        timeouts: crate::common::quick_timeouts(),
        tls: mailspool_smtp::TlsPolicy::None,
        auth: None,
        bind: Vec::new(),
        verifier: None,
    };
    while !stop.load(Ordering::SeqCst) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port.load(Ordering::SeqCst) as u16));
        let Ok(mut s) =
            mailspool_smtp::Session::connect(addr, "127.0.0.1", &settings, &connector).await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        for i in 0..20 {
            let token = format!("smtp-{}", serial.fetch_add(1, Ordering::SeqCst));
            let body = format!("Subject: chaos\n\ntoken: {token}\n");
            if i > 0 {
                s.reset_before_next();
            }
            let env = mailspool_smtp::Envelope {
                from: "chaos@client.test".into(),
                to: vec!["rcpt@chaos.test".into()],
                size: body.len() as u64,
                eight_bit: false,
                utf8_headers: false,
            };
            match s.send(&env, &mut body.as_bytes()).await {
                Ok(o) if o.data.as_ref().is_some_and(|d| d.is_positive()) => {
                    acked.lock().unwrap().push(token)
                }
                _ => break,
            }
        }
    }
}
