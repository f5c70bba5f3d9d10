//! The sendmail command line, as Postfix's sendmail(1) documents it, for programs that
//! run `/usr/sbin/sendmail` (cron, PHP's mail(), git send-email, monitoring).
//!
//! Options are parsed getopt-style (clustered flags, attached or separate values,
//! parsing stops at the first non-option or `--`), so an address is never taken for an
//! option and an option value is never taken for an address. Options sendmail(1)
//! documents as ignored are accepted and ignored; unknown ones fail with EX_USAGE.

use std::ffi::OsString;
use std::path::PathBuf;

use mailspool::sysexits;

use super::args::{ListArgs, SendArgs};
use super::send::{SendRequest, queue_message};
use super::{CliResult, Failure, config, init_logging, queue};

/// Options that take a value (attached, or as the next argument).
const WITH_VALUE: &str = "ABCFLNORVXbefhopqr";
/// Flags without a value.
const FLAGS: &str = "GIUcimntvx";

#[derive(Debug, Default, PartialEq)]
enum Mode {
    #[default]
    Deliver,
    ListQueue,
    Smtp,
    RunQueue,
    Aliases,
}

#[derive(Debug, Default)]
struct Parsed {
    mode: Mode,
    extract: bool,
    ignore_dots: bool,
    from: Option<String>,
    full_name: Option<String>,
    config: Option<PathBuf>,
    verbose: u8,
    recipients: Vec<String>,
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure::new(
        sysexits::USAGE,
        format!(
            "{}\nusage: sendmail [-t] [-i|-oi] [-f sender] [-F name] [-bm|-bp] [--] [recipient ...]",
            msg.into()
        ),
    )
}

fn parse(args: &[OsString]) -> Result<Parsed, Failure> {
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            a.clone()
                .into_string()
                .map_err(|a| usage(format!("argument {a:?} is not valid UTF-8")))
        })
        .collect::<Result<_, _>>()?;
    let mut p = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            i -= 1;
            break;
        }
        if arg == "-q" {
            p.mode = Mode::RunQueue;
            continue;
        }
        let flags: Vec<char> = arg[1..].chars().collect();
        let mut j = 0;
        while j < flags.len() {
            let opt = flags[j];
            j += 1;
            if WITH_VALUE.contains(opt) {
                let value = if j < flags.len() {
                    flags[j..].iter().collect::<String>()
                } else if i < args.len() {
                    i += 1;
                    args[i - 1].clone()
                } else {
                    return Err(usage(format!("option -{opt} needs a value")));
                };
                j = flags.len();
                apply_value(&mut p, opt, value)?;
            } else if FLAGS.contains(opt) {
                apply_flag(&mut p, opt);
            } else {
                return Err(usage(format!("unknown option -{opt}")));
            }
        }
    }
    p.recipients = args[i..].to_vec();
    Ok(p)
}

fn apply_value(p: &mut Parsed, opt: char, value: String) -> Result<(), Failure> {
    match opt {
        'f' | 'r' => p.from = Some(value),
        'F' => p.full_name = Some(value),
        'C' => p.config = Some(PathBuf::from(value)),
        'o' if value == "i" => p.ignore_dots = true,
        'b' => {
            p.mode = match value.as_str() {
                "m" => Mode::Deliver,
                "p" => Mode::ListQueue,
                "s" => Mode::Smtp,
                "i" => Mode::Aliases,
                other => return Err(usage(format!("-b{other} is not supported"))),
            }
        }
        'q' => p.mode = Mode::RunQueue,
        // -B body type, -L label, -N dsn, -O option, -R return, -V envid, -X log,
        // -e error mode, -h hop count, -p protocol, -o<x> options, -A: accepted, ignored.
        _ => tracing::debug!("ignoring sendmail option -{opt}{value}"),
    }
    Ok(())
}

fn apply_flag(p: &mut Parsed, opt: char) {
    match opt {
        't' => p.extract = true,
        'i' => p.ignore_dots = true,
        'v' => p.verbose += 1,
        'I' => p.mode = Mode::Aliases,
        // -G gateway, -U initial submission, -c, -m, -n, -x: accepted, ignored.
        _ => {}
    }
}

pub fn run(prog: &str, args: &[OsString]) -> CliResult {
    let p = parse(args)?;
    init_logging(p.verbose);
    match p.mode {
        Mode::Aliases => {
            println!("{prog}: mailspool does not use aliases; nothing to do");
            Ok(())
        }
        Mode::ListQueue => {
            let c = config(p.config.as_deref(), None)?;
            queue::list(&c, &ListArgs::default())
        }
        Mode::Smtp => {
            let c = config(p.config.as_deref(), None)?;
            super::serve::stdio(&c)
        }
        Mode::RunQueue => {
            let c = config(p.config.as_deref(), None)?;
            queue::run_queue(&c, true)
        }
        Mode::Deliver => {
            let c = config(p.config.as_deref(), None)?;
            let verbose = p.verbose > 0;
            let sent = queue_message(
                &c,
                SendRequest {
                    args: SendArgs {
                        extract: p.extract,
                        ignore_dots: p.ignore_dots,
                        from: p.from,
                        full_name: p.full_name,
                        id: None,
                        file: None,
                        now: false,
                        background: false,
                        recipients: p.recipients,
                    },
                    dot_ends: true,
                },
            )?;
            if verbose {
                eprintln!(
                    "{prog}: queued {} from <{}> for {}",
                    sent.id,
                    sent.from,
                    sent.recipients.join(", ")
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, Failure> {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn getopt_style() {
        let x = p(&["-t", "-oi", "-f", "me@x.org", "-Fme too", "a@b.c", "-v"])
            .unwrap_or_else(|f| panic!("{}", f.message));
        assert!(x.extract && x.ignore_dots);
        assert_eq!(x.from.as_deref(), Some("me@x.org"));
        assert_eq!(x.full_name.as_deref(), Some("me too"));
        // Parsing stops at the first non-option: "-v" is a recipient (refused later).
        assert_eq!(x.recipients, ["a@b.c", "-v"]);

        let x = p(&[
            "-ti",
            "-fme@x.org",
            "-oem",
            "-odb",
            "-B8BITMIME",
            "-Lcron",
            "--",
            "-x@y.z",
        ])
        .ok()
        .unwrap();
        assert!(x.extract && x.ignore_dots);
        assert_eq!(x.from.as_deref(), Some("me@x.org"));
        assert_eq!(x.recipients, ["-x@y.z"]);

        let x = p(&["-f", ""]).ok().unwrap();
        assert_eq!(x.from.as_deref(), Some(""));
        assert_eq!(p(&["-bp"]).ok().unwrap().mode, Mode::ListQueue);
        assert_eq!(p(&["-q"]).ok().unwrap().mode, Mode::RunQueue);
        assert_eq!(p(&["-q15m"]).ok().unwrap().mode, Mode::RunQueue);
        assert_eq!(p(&["-bs"]).ok().unwrap().mode, Mode::Smtp);
    }

    #[test]
    fn unknown_options_are_usage_errors() {
        for bad in [&["-k"][..], &["-bz"], &["-f"], &["-tZ"]] {
            let e = p(bad).err().unwrap();
            assert_eq!(e.code, sysexits::USAGE, "{bad:?}");
        }
    }
}
