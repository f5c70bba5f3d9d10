//! Helpers shared by the command-line tests.
#![allow(dead_code)] // each test file uses its own part of these

pub mod api;
pub mod netns;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use mailspool_spool::{NodeName, Parsed};

/// A temporary spool and configuration, and the binary under its three names.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::write(env.config_path(), "").unwrap();
        std::os::unix::fs::symlink(
            assert_cmd::cargo::cargo_bin!("mailspool"),
            env.dir.path().join("sendmail"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            assert_cmd::cargo::cargo_bin!("mailspool"),
            env.dir.path().join("mailq"),
        )
        .unwrap();
        env
    }
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mailspool.toml")
    }
    pub fn isolate(&self, mut c: assert_cmd::Command) -> assert_cmd::Command {
        c.env("MAILSPOOL_SPOOL", self.spool())
            .env("MAILSPOOL_CONFIG", self.config_path())
            .env("LOGNAME", "tester")
            .env_remove("MAILSPOOL_LOG");
        c
    }
    pub fn mailspool(&self) -> assert_cmd::Command {
        self.isolate(assert_cmd::Command::new(assert_cmd::cargo::cargo_bin!(
            "mailspool"
        )))
    }
    pub fn sendmail(&self) -> assert_cmd::Command {
        self.isolate(assert_cmd::Command::new(self.dir.path().join("sendmail")))
    }
    pub fn mailq(&self) -> assert_cmd::Command {
        self.isolate(assert_cmd::Command::new(self.dir.path().join("mailq")))
    }
    /// (name, content) of every node in `tier` (lock files are not nodes).
    pub fn nodes(&self, tier: usize) -> Vec<(NodeName, String)> {
        let Ok(rd) = fs::read_dir(self.spool().join(tier.to_string())) else {
            return Vec::new();
        };
        let mut out: Vec<_> = rd
            .filter_map(|e| {
                let e = e.unwrap();
                match NodeName::parse(e.file_name().to_str().unwrap()) {
                    Parsed::Node(n) => Some((n, fs::read_to_string(e.path()).unwrap())),
                    Parsed::NotANode => None,
                    _ => panic!("bad node name {:?}", e.file_name()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.0.to.cmp(&b.0.to));
        out
    }
    /// Nothing in any tier and nothing in tmp/.
    pub fn assert_empty(&self) {
        for tier in 0..7 {
            assert!(self.nodes(tier).is_empty(), "tier {tier} not empty");
        }
        if let Ok(rd) = fs::read_dir(self.spool().join("tmp")) {
            assert_eq!(rd.count(), 0, "tmp/ not empty");
        }
    }
}

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

/// Every node file under a spool's tiers and `hold/` (lock files and hidden temps
/// excluded), sorted.
pub fn node_files(spool: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for top in [spool.to_path_buf(), spool.join("hold")] {
        for tier in 0..10 {
            let Ok(dir) = fs::read_dir(top.join(tier.to_string())) else {
                continue;
            };
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !mailspool_spool::name::is_not_a_node(&name) {
                    out.push(e.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// A free port on loopback (bound, released; the server under test binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `program` is on the PATH (a test that needs it says why it skips).
pub fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
