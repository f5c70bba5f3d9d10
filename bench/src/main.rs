//! Benchmarks of mailspool against Postfix, measured in one run on one disk (not tests).
//!
//! `mailspool-bench intake --dir DIR [--seconds S] [--postfix-sendmail PATH]` prints:
//! the fsync ceiling (write + fdatasync + rename + directory fsync per second), library
//! `send_mail` rates for a 4 KB message to 1 and to 10 recipients on 1 and 8 threads,
//! `mailspool send` through the CLI, and Postfix's `sendmail -t -i`, with ratios.
//! `bench/intake` sets up Postfix and runs this.
//!
//! `mailspool-bench fill --dir DIR --count N --domain D [--tier T] [--size BYTES]`
//! writes N nodes (one recipient each, due now) straight into a spool, without fsync:
//! set-up for `bench/deliver`, not a measurement.
//! `mailspool-bench tarpit` listens on 127.0.0.1:0, prints the port, accepts and never
//! answers.
//! `mailspool-bench command --seconds S -- PROGRAM ARGS...` prints how many 4 KB messages
//! per second PROGRAM takes on stdin, one process each (`bench/drop` runs it as an
//! unprivileged user, for the setgid drop and for Postfix's sendmail).
//! `mailspool-bench pickup --dir DIR --count N --seconds S` prints the library's commit
//! rate (1 thread, 1 recipient) and the pickup's rate over N dropped messages.
//! `sink`, `load` and `cert`: the SMTP load of `bench/load` (see `smtp_load.rs`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailspool::{Config, Mailspool, MessageSource, SendMail};

mod history;
mod http_load;
mod smtp_load;

struct Args {
    dir: PathBuf,
    seconds: f64,
    postfix_sendmail: Option<PathBuf>,
    mailspool_bin: PathBuf,
}

fn parse_args() -> Args {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    if cmd != "intake" {
        eprintln!(
            "usage: mailspool-bench intake --dir DIR [--seconds S] [--postfix-sendmail PATH] [--mailspool PATH]"
        );
        std::process::exit(64);
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut a = Args {
        dir: std::env::temp_dir().join("mailspool-bench"),
        seconds: 3.0,
        postfix_sendmail: None,
        mailspool_bin: exe_dir.join("mailspool"),
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value),
            "--seconds" => a.seconds = value.parse().expect("--seconds"),
            "--postfix-sendmail" => a.postfix_sendmail = Some(PathBuf::from(value)),
            "--mailspool" => a.mailspool_bin = PathBuf::from(value),
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

/// A 4 KB message with `n` recipients in To.
fn message(rcpts: usize) -> Vec<u8> {
    let to: Vec<String> = (0..rcpts).map(|i| format!("user{i}@example.org")).collect();
    let mut m = format!(
        "From: bench@example.com\nTo: {}\nSubject: intake benchmark\n\n",
        to.join(", ")
    )
    .into_bytes();
    while m.len() < 4096 {
        m.extend_from_slice(b"The quick brown fox jumps over the lazy dog, again and again.\n");
    }
    m.truncate(4095);
    m.push(b'\n');
    m
}

/// Run `op` on `threads` threads for `seconds`; returns operations per second.
fn rate(threads: usize, seconds: f64, op: impl Fn() + Sync) -> f64 {
    let deadline = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let counts: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while start.elapsed() < deadline {
                        op();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64()
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).unwrap();
    p
}

fn fsync_ceiling(dir: &Path, seconds: f64) -> f64 {
    let d = fresh(dir, "ceiling");
    let data = message(1);
    let n = std::sync::atomic::AtomicU64::new(0);
    rate(1, seconds, || {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = d.join(format!("t{i}"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .unwrap();
        f.write_all(&data).unwrap();
        f.sync_data().unwrap();
        fs::rename(&tmp, d.join(format!("n{i}"))).unwrap();
        fs::File::open(&d).unwrap().sync_all().unwrap();
    })
}

fn library(dir: &Path, name: &str, rcpts: usize, threads: usize, seconds: f64) -> f64 {
    let config = Config {
        spool_dir: fresh(dir, name),
        ..Config::default()
    };
    let spool = Arc::new(Mailspool::open(config).unwrap());
    let msg = message(rcpts);
    rate(threads, seconds, || {
        spool
            .send_mail(SendMail::new(MessageSource::Bytes(&msg)))
            .unwrap();
    })
}

fn command(program: &Path, args: &[&str], dir: &Path, seconds: f64) -> f64 {
    let msg = message(1);
    rate(1, seconds, || {
        let mut child = Command::new(program)
            .args(args)
            .env("MAILSPOOL_SPOOL", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        child.stdin.take().unwrap().write_all(&msg).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "{} failed: {status}", program.display());
    })
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("fill") => return fill(),
        Some("send-rate") => return send_rate(),
        Some("tarpit") => return tarpit(),
        Some("command") => return command_rate(),
        Some("pickup") => return pickup(),
        Some("sink") => return smtp_load::sink(),
        Some("load") => return smtp_load::load(),
        Some("cert") => return smtp_load::cert(),
        Some("http") => return http_load::post(),
        Some("http-get") => return http_load::get(),
        Some("history") => return history::run(),
        _ => {}
    }
    let a = parse_args();
    fs::create_dir_all(&a.dir).unwrap();
    let s = a.seconds;
    println!(
        "# intake benchmark: 4 KB messages, {s} s per measurement, spool in {}",
        a.dir.display()
    );
    let ceiling = fsync_ceiling(&a.dir, s);
    let lib_1x1 = library(&a.dir, "lib-1x1", 1, 1, s);
    let lib_1x10 = library(&a.dir, "lib-1x10", 10, 1, s);
    let lib_8x1 = library(&a.dir, "lib-8x1", 1, 8, s);
    let lib_8x10 = library(&a.dir, "lib-8x10", 10, 8, s);
    let cli_dir = fresh(&a.dir, "cli");
    let floor = command(Path::new("/bin/cat"), &[], &cli_dir, s);
    let cli = command(&a.mailspool_bin, &["send", "-t", "-i"], &cli_dir, s);
    let postfix = a
        .postfix_sendmail
        .as_ref()
        .map(|p| command(p, &["-t", "-i"], &cli_dir, s));

    println!();
    println!("| measurement | msgs/s | ratio |");
    println!("| --- | ---: | --- |");
    println!("| fsync ceiling (write+fdatasync+rename+dir fsync) | {ceiling:.0} | 1.00 |");
    println!(
        "| library send_mail, 1 thread, 1 recipient | {lib_1x1:.0} | {:.2}× ceiling (target ≥ 0.7) |",
        lib_1x1 / ceiling
    );
    println!(
        "| library send_mail, 1 thread, 10 recipients | {lib_1x10:.0} | cost {:.2}× one recipient (target ≤ 1.3) |",
        lib_1x1 / lib_1x10
    );
    println!(
        "| library send_mail, 8 threads, 1 recipient | {lib_8x1:.0} | {:.2}× one thread (target ≥ 2) |",
        lib_8x1 / lib_1x1
    );
    println!(
        "| library send_mail, 8 threads, 10 recipients | {lib_8x10:.0} | cost {:.2}× one recipient |",
        lib_8x1 / lib_8x10
    );
    match postfix {
        Some(p) => {
            println!(
                "| process start floor (`cat`, same stdin piping) | {floor:.0} | per message: mailspool {:.2} ms, Postfix {:.2} ms above the floor |",
                1000.0 / cli - 1000.0 / floor,
                1000.0 / p - 1000.0 / floor
            );
            println!(
                "| `mailspool send -t -i` (CLI, one process per message) | {cli:.0} | {:.2}× Postfix sendmail (target ≥ 5) |",
                cli / p
            );
            println!("| Postfix `sendmail -t -i` (one process per message) | {p:.0} | 1.00 |");
        }
        None => println!(
            "| `mailspool send -t -i` (CLI, one process per message) | {cli:.0} | (Postfix not measured) |"
        ),
    }
}

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `send-rate --spool DIR|URL [--threads T] [--seconds S]`: library `send_mail` of 4 KB
/// one-recipient messages into any back end; prints messages per second.
fn send_rate() {
    let spool = flag("--spool").expect("--spool");
    let threads: usize = flag("--threads").map_or(1, |t| t.parse().unwrap());
    let seconds: f64 = flag("--seconds").map_or(5.0, |s| s.parse().unwrap());
    let config = Config {
        spool_dir: PathBuf::from(spool),
        ..Config::default()
    };
    let ms = Arc::new(Mailspool::open(config).unwrap());
    let msg = message(1);
    let r = rate(threads, seconds, || {
        ms.send_mail(SendMail::new(MessageSource::Bytes(&msg)))
            .unwrap();
    });
    println!("{r:.0}");
}

/// Write `count` nodes to `<domain>` into `tier`, due now.
fn fill() {
    let dir = PathBuf::from(flag("--dir").expect("--dir"));
    let count: usize = flag("--count").map_or(1, |c| c.parse().unwrap());
    let domain = flag("--domain").expect("--domain");
    let tier: usize = flag("--tier").map_or(0, |t| t.parse().unwrap());
    let size: usize = flag("--size").map_or(4096, |s| s.parse().unwrap());
    let config = mailspool_spool::SpoolConfig::default();
    let time = mailspool_spool::now().saturating_sub(config.period(tier) + 60);
    let spool = mailspool_spool::Spool::create(&dir, config).unwrap();
    let tier_dir = spool.tier_dir(tier);
    fs::create_dir_all(&tier_dir).unwrap();
    let mut body = Vec::with_capacity(size);
    while body.len() < size {
        body.extend_from_slice(b"The quick brown fox jumps over the lazy dog, again and again.\n");
    }
    body.truncate(size.saturating_sub(1));
    body.push(b'\n');
    for i in 0..count {
        let id = spool.new_id();
        let to = format!("user{i}@{domain}");
        let name = mailspool_spool::NodeName::new(time, &id, &to, "bench@example.com");
        let mut f = fs::File::create(tier_dir.join(name.file_name())).unwrap();
        write!(
            f,
            "From: bench@example.com\nTo: {to}\nSubject: bench {i}\nMessage-ID: <{id}@bench>\n\n"
        )
        .unwrap();
        f.write_all(&body).unwrap();
    }
}

/// Accept connections and never answer (a tarpit), until killed.
fn tarpit() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    let mut held = Vec::new();
    for conn in listener.incoming().flatten() {
        held.push(conn);
    }
}

/// `command --seconds S -- PROGRAM ARGS...`: one process per message, messages per second.
fn command_rate() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = flag("--seconds").map_or(5.0, |s| s.parse().unwrap());
    let dash = args
        .iter()
        .position(|a| a == "--")
        .expect("-- PROGRAM ARGS");
    let program = PathBuf::from(&args[dash + 1]);
    let rest: Vec<&str> = args[dash + 2..].iter().map(String::as_str).collect();
    let dir = std::env::temp_dir();
    println!("{:.0}", command(&program, &rest, &dir, seconds));
}

/// `pickup --dir DIR --count N --seconds S`: the library's commit rate, then the rate at
/// which the pickup queues N dropped messages (written without fsync: set-up).
fn pickup() {
    let dir = PathBuf::from(flag("--dir").expect("--dir"));
    let count: usize = flag("--count").map_or(100_000, |c| c.parse().unwrap());
    let seconds: f64 = flag("--seconds").map_or(5.0, |s| s.parse().unwrap());
    fs::create_dir_all(&dir).unwrap();
    let lib = library(&dir, "lib-1x1", 1, 1, seconds);
    let config = Config {
        spool_dir: fresh(&dir, "picked"),
        hostname: "bench.test".into(),
        ..Config::default()
    };
    let ms = Mailspool::open(config).unwrap();
    let drop_dir = ms.maildrop();
    fs::create_dir_all(&drop_dir).unwrap();
    let msg = message(1);
    let uid = std::fs::metadata(&dir)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let env = mailspool_drop::format::Envelope {
        uid,
        login: "bench".into(),
        rcpts: vec!["rcpt@example.org".into()],
        ..Default::default()
    };
    for i in 0..count {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(drop_dir.join(format!("d{i:08}")))
            .unwrap();
        env.write_to(&mut f).unwrap();
        f.write_all(&msg).unwrap();
    }
    let start = Instant::now();
    let mut picked = 0;
    while picked < count {
        let r = ms.pickup().unwrap();
        assert!(r.picked > 0 || r.left > 0, "{r:?}");
        picked += r.picked;
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    println!("{lib:.0} {rate:.0}");
}
