//! `mailspool usage`: nodes and bytes spooled and sent per day, from usage/raw. Counted
//! as Mail::Spool 0.50 counts: per node, so a message to three recipients is three.

use mailspool::{Config, SpoolError, sysexits};
use mailspool_spool::time::day_string;

use super::{CliResult, Failure};

pub fn run(config: &Config, days: u64, json: bool) -> CliResult {
    let spool = match mailspool::open_store(config, false) {
        Ok(s) => s,
        Err(e @ SpoolError::Missing(_)) => {
            return Err(Failure::new(sysexits::NOINPUT, e.to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(files) = spool.as_files()
        && !files.dir().join("usage").is_dir()
        && !json
    {
        println!(
            "usage logging is off: {} does not exist (usage_log = true creates it)",
            files.dir().join("usage").display()
        );
        return Ok(());
    }
    let table = spool.usage(days)?;
    if json {
        for (day, u) in &table {
            let obj = serde_json::json!({
                "date": day_string(*day),
                "spooled": u.spooled, "spooled_bytes": u.spooled_bytes,
                "sent": u.sent, "sent_bytes": u.sent_bytes,
            });
            println!("{obj}");
        }
        return Ok(());
    }
    println!(
        "{:<10} {:>9} {:>14} {:>9} {:>14}",
        "DATE (UTC)", "SPOOLED", "BYTES", "SENT", "BYTES"
    );
    let mut total = mailspool_spool::usage::DayUsage::default();
    for (day, u) in &table {
        println!(
            "{:<10} {:>9} {:>14} {:>9} {:>14}",
            day_string(*day),
            u.spooled,
            u.spooled_bytes,
            u.sent,
            u.sent_bytes
        );
        total.spooled += u.spooled;
        total.spooled_bytes += u.spooled_bytes;
        total.sent += u.sent;
        total.sent_bytes += u.sent_bytes;
    }
    println!(
        "{:<10} {:>9} {:>14} {:>9} {:>14}",
        format!("{days} days"),
        total.spooled,
        total.spooled_bytes,
        total.sent,
        total.sent_bytes
    );
    println!("(per node, as Mail::Spool 0.50 counts: a message to three recipients counts three)");
    Ok(())
}
