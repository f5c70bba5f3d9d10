//! Queue one message with lettre into the spool `mailspool` uses (or `--spool DIR`):
//!
//!     cargo run -p mailspool-lettre --example queue -- ops@example.org
//!     cargo run -p mailspool-lettre --example queue -- --spool /tmp/spool ops@example.org
//!
//! then `mailspool queue` lists it and `mailspool daemon` delivers it.

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncTransport, Message};
use mailspool::Mailspool;
use mailspool_lettre::AsyncMailspoolTransport;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).collect::<Vec<_>>();
    let spool = match args.iter().position(|a| a == "--spool") {
        Some(i) if i + 1 < args.len() => {
            let dir = args.remove(i + 1);
            args.remove(i);
            Some(std::path::PathBuf::from(dir))
        }
        _ => None,
    };
    let Some(to) = args.first() else {
        eprintln!("usage: queue [--spool DIR] RECIPIENT");
        std::process::exit(64);
    };
    let transport = AsyncMailspoolTransport::new(Mailspool::discover(None, spool.as_deref())?);
    let email = Message::builder()
        .from(Mailbox::new(
            Some("lettre example".into()),
            "app@example.com".parse()?,
        ))
        .to(to.parse()?)
        .subject("queued by lettre through mailspool")
        .header(ContentType::TEXT_PLAIN)
        .body(String::from(
            "This message was committed to the spool before send() returned.\n",
        ))?;
    let queued = transport.send(email).await?;
    println!("queued {} for {}", queued.id, queued.recipients.join(", "));
    Ok(())
}
