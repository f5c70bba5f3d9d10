//! The `mailspool` command. Invoked as `sendmail` or `mailq` (a symlink), it speaks the
//! sendmail command-line interface instead.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
