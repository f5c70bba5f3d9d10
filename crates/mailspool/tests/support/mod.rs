//! Helpers shared by the command-line tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Start `mailspool serve` from `cmd` (configured, without its subcommand) and return
/// the process with the port it says it listens on.
pub fn spawn_serve(mut cmd: Command) -> (Child, u16) {
    let mut child = cmd.arg("serve").stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("serve said where it listens").unwrap();
        if let Some(addr) = line.strip_prefix("mailspool: listening on ") {
            break addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, port)
}
