//! `history --spool DIR|URL [--fill N]`: how long one page of the history takes with
//! many events stored (issue 26: "< 100 ms a page with 10 million events"). `--fill`
//! appends N events first (the file spool; the PostgreSQL one is filled by SQL in
//! `bench/history`): 3 per message, 100,000 recipients, 1 % bounced, over the last day.

use std::path::PathBuf;
use std::time::Instant;

use mailspool::{Config, SpoolConfig};
use mailspool_events::{Event, Kind, Query};

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The event `i` of `n` (the same shape `bench/history` writes with SQL).
pub fn event(i: u64, n: u64, now: u64) -> Event {
    let kind = if i.is_multiple_of(100) {
        Kind::Bounced
    } else if i.is_multiple_of(3) {
        Kind::Accepted
    } else {
        Kind::Delivered
    };
    let mut e = Event::new(
        kind,
        &format!("M{:09}", i / 3),
        "app@example.com",
        &format!("user{}@example.org", i % 100_000),
    );
    e.event_id = format!("E{i}");
    e.time = now - (n - i) * 86_400 / n;
    e
}

fn median_ms(mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..5 {
        let t = Instant::now();
        found = f();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[2], found)
}

pub fn run() {
    let spool = flag("--spool").expect("--spool DIR|URL");
    let fill: u64 = flag("--fill").map_or(0, |n| n.parse().unwrap());
    let config = Config {
        spool_dir: PathBuf::from(&spool),
        spool: SpoolConfig {
            usage_log: false,
            ..SpoolConfig::default()
        },
        ..Config::default()
    };
    let store = mailspool::open_store(&config, true).unwrap();
    let now = mailspool_spool::now();
    if fill > 0 {
        let t = Instant::now();
        let mut batch = Vec::with_capacity(1000);
        for i in 1..=fill {
            batch.push(event(i, fill, now));
            if batch.len() == 1000 {
                store.record_events(&batch, false).unwrap();
                batch.clear();
            }
        }
        store.record_events(&batch, true).unwrap();
        println!("filled {fill} events in {:.1} s", t.elapsed().as_secs_f64());
    }
    let page = |q: Query| {
        let store = store.clone();
        move || store.read_events(&q).unwrap().events.len()
    };
    // A cursor halfway: where `since` half a day ago starts.
    let middle = store
        .read_events(&Query {
            since: Some(now - 43_200),
            limit: 1,
            ..Default::default()
        })
        .unwrap()
        .next;
    let probes: Vec<(&str, Query)> = vec![
        ("first page, no filter (100 events)", Query::default()),
        (
            "a page from a cursor halfway (100 events)",
            Query {
                cursor: middle,
                ..Default::default()
            },
        ),
        (
            "the last minute (`since`)",
            Query {
                since: Some(now - 60),
                ..Default::default()
            },
        ),
        (
            "`type=bounced`, first page",
            Query {
                kinds: vec![Kind::Bounced],
                ..Default::default()
            },
        ),
        (
            "one recipient (`recipient=`, ~100 events in all), first page",
            Query {
                recipient: Some("user4242@example.org".into()),
                ..Default::default()
            },
        ),
        (
            "one message by id (`mailspool log ID`), first page",
            Query {
                key: Some("M000424242".into()),
                ..Default::default()
            },
        ),
    ];
    println!("| page | median of 5 (ms) | events in the page |");
    println!("| --- | ---: | ---: |");
    for (label, q) in probes {
        let (ms, found) = median_ms(page(q));
        println!("| {label} | {ms:.1} | {found} |");
    }
}
