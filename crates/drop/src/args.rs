//! The sendmail command line, as Postfix's sendmail(1) documents it, shared by the drop
//! (the fast path for what `sendmail` is mostly called for) and the full `mailspool`
//! program (which takes the rarer modes: `-bp`, `-bs`, `-q`).
//!
//! Options are parsed getopt-style (clustered flags, attached or separate values,
//! parsing stops at the first non-option or `--`), so an address is never taken for an
//! option and an option value is never taken for an address. Options sendmail(1)
//! documents as ignored are accepted and ignored; unknown ones are usage errors.

use std::path::PathBuf;

/// Options that take a value (attached, or as the next argument).
const WITH_VALUE: &str = "ABCFLNORVXbefhopqr";
/// Flags without a value.
const FLAGS: &str = "GIUcimntvx";

/// What sendmail is asked to do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read a message and queue it (`-bm`, the default).
    #[default]
    Deliver,
    /// List the queue (`-bp`, `mailq`).
    ListQueue,
    /// An SMTP session on stdin/stdout (`-bs`).
    Smtp,
    /// Run the queue (`-q`).
    RunQueue,
    /// Rebuild aliases (`-bi`, `-I`, `newaliases`): nothing to do.
    Aliases,
}

/// A parsed sendmail command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendmailArgs {
    /// The mode.
    pub mode: Mode,
    /// `-t`: recipients also from To, Cc and Bcc.
    pub extract: bool,
    /// `-i` / `-oi`: a line holding only `.` does not end the message.
    pub ignore_dots: bool,
    /// `-f` / `-r`: the envelope sender (`""` or `"<>"`: the null sender).
    pub from: Option<String>,
    /// `-F`: the full name for a From header that is added.
    pub full_name: Option<String>,
    /// `-C`: a configuration file.
    pub config: Option<PathBuf>,
    /// `-v`, counted.
    pub verbose: u8,
    /// The recipients, as given.
    pub recipients: Vec<String>,
}

/// The usage line printed with every usage error.
pub const USAGE: &str =
    "usage: sendmail [-t] [-i|-oi] [-f sender] [-F name] [-bm|-bp|-bs] [-q] [--] [recipient ...]";

/// Parse sendmail's arguments (without the program name).
pub fn parse(args: &[String]) -> Result<SendmailArgs, String> {
    let mut p = SendmailArgs::default();
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
                    return Err(format!("option -{opt} needs a value"));
                };
                j = flags.len();
                apply_value(&mut p, opt, value)?;
            } else if FLAGS.contains(opt) {
                apply_flag(&mut p, opt);
            } else {
                return Err(format!("unknown option -{opt}"));
            }
        }
    }
    p.recipients = args[i..].to_vec();
    Ok(p)
}

fn apply_value(p: &mut SendmailArgs, opt: char, value: String) -> Result<(), String> {
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
                other => return Err(format!("-b{other} is not supported")),
            }
        }
        'q' => p.mode = Mode::RunQueue,
        // -B body type, -L label, -N dsn, -O option, -R return, -V envid, -X log,
        // -e error mode, -h hop count, -p protocol, -o<x> options, -A: accepted, ignored.
        _ => {}
    }
    Ok(())
}

fn apply_flag(p: &mut SendmailArgs, opt: char) {
    match opt {
        't' => p.extract = true,
        'i' => p.ignore_dots = true,
        'v' => p.verbose = p.verbose.saturating_add(1),
        'I' => p.mode = Mode::Aliases,
        // -G gateway, -U initial submission, -c, -m, -n, -x: accepted, ignored.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<SendmailArgs, String> {
        parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn getopt_style() {
        let x = p(&["-t", "-oi", "-f", "me@x.org", "-Fme too", "a@b.c", "-v"]).unwrap();
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
        .unwrap();
        assert!(x.extract && x.ignore_dots);
        assert_eq!(x.from.as_deref(), Some("me@x.org"));
        assert_eq!(x.recipients, ["-x@y.z"]);

        let x = p(&["-f", ""]).unwrap();
        assert_eq!(x.from.as_deref(), Some(""));
        assert_eq!(p(&["-bp"]).unwrap().mode, Mode::ListQueue);
        assert_eq!(p(&["-q"]).unwrap().mode, Mode::RunQueue);
        assert_eq!(p(&["-q15m"]).unwrap().mode, Mode::RunQueue);
        assert_eq!(p(&["-bs"]).unwrap().mode, Mode::Smtp);
    }

    #[test]
    fn unknown_options_are_usage_errors() {
        for bad in [&["-k"][..], &["-bz"], &["-f"], &["-tZ"]] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }
}
