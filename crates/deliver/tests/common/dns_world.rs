//! A real DNSSEC world on loopback, from Debian's packages: bind9 serves a signed
//! root, a signed `test.` and `dane.test.` (records can be altered after signing) and
//! an unsigned `plain.test.`; one unbound validates from that root's key as its only
//! trust anchor, another only iterates (it passes RRSIGs along without checking them).
//! Ports are free ones found at start; everything lives in a temp dir and the
//! servers are killed when the world is dropped.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The programs the world needs (bind9, bind9-utils, unbound).
const TOOLS: [&str; 5] = [
    "named",
    "dnssec-keygen",
    "dnssec-signzone",
    "dnssec-dsfromkey",
    "unbound",
];

fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Whether the tools are here; without them the test skips on a developer's
/// machine and fails in CI (`.ci/run` installs them).
pub fn available() -> bool {
    let missing: Vec<&str> = TOOLS.into_iter().filter(|t| find(t).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install bind9, bind9-utils and unbound; missing: {missing:?}"
    );
    eprintln!("skipped: {missing:?} not installed (apt install bind9 bind9-utils unbound)");
    false
}

/// A record of a zone file: `owner TYPE rdata`.
pub struct Rec(pub String, pub &'static str, pub String);

/// What the world serves.
pub struct Zones {
    /// Records of the signed `dane.test.`.
    pub dane: Vec<Rec>,
    /// Records of the unsigned `plain.test.`.
    pub plain: Vec<Rec>,
    /// (owner, type, new rdata): changed in `dane.test.` after signing, the old
    /// signature kept (bogus to a validator).
    pub altered: Vec<Rec>,
}

/// The running world.
pub struct World {
    pub dir: tempfile::TempDir,
    /// The validating unbound.
    pub validating: SocketAddr,
    /// The unbound that does not validate.
    pub iterating: SocketAddr,
    /// bind9 itself.
    pub authoritative: SocketAddr,
    /// The root's key as a `dnssec_trust_anchors` file has it (a DNSKEY line).
    pub anchor_file: PathBuf,
    /// The same anchor as the root's DS record.
    pub anchor_ds_file: PathBuf,
    children: Vec<Child>,
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    // Free for UDP and TCP both, as far as one can tell before handing it on.
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn run(dir: &Path, tool: &str, args: &[&str]) -> String {
    let out = Command::new(find(tool).unwrap())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn zone_text(origin: &str, records: &[Rec]) -> String {
    let mut z = format!(
        "$TTL 300\n{origin} IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300\n{origin} IN NS ns.test.\n"
    );
    for Rec(owner, kind, data) in records {
        z.push_str(&format!("{owner} IN {kind} {data}\n"));
    }
    z
}

/// Sign `origin`'s zone file (one ECDSA P-256 key, signing everything); returns the
/// key's file base name.
fn sign(dir: &Path, origin: &str, file: &str) -> String {
    let key = run(
        dir,
        "dnssec-keygen",
        &[
            "-q",
            "-a",
            "ECDSAP256SHA256",
            "-f",
            "KSK",
            "-n",
            "ZONE",
            origin,
        ],
    );
    let public = std::fs::read_to_string(dir.join(format!("{key}.key"))).unwrap();
    let mut text = std::fs::read_to_string(dir.join(file)).unwrap();
    text.push_str(&public);
    std::fs::write(dir.join(file), text).unwrap();
    run(
        dir,
        "dnssec-signzone",
        // One record per line, every owner written out: records can be altered by line.
        &[
            "-q",
            "-z",
            "-O",
            "full",
            "-o",
            origin,
            "-f",
            &format!("{file}.signed"),
            file,
            &key,
        ],
    );
    key
}

fn ds(dir: &Path, key: &str) -> String {
    run(dir, "dnssec-dsfromkey", &["-2", &format!("{key}.key")]) + "\n"
}

impl World {
    pub async fn start(zones: Zones) -> World {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("dane.zone"), zone_text("dane.test.", &zones.dane)).unwrap();
        let dane_key = sign(d, "dane.test.", "dane.zone");
        let mut signed = std::fs::read_to_string(d.join("dane.zone.signed")).unwrap();
        for Rec(owner, kind, data) in &zones.altered {
            let mut found = false;
            signed = signed
                .lines()
                .map(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    if words.first() == Some(&owner.as_str()) && words.get(3) == Some(kind) {
                        found = true;
                        format!("{owner} 300 IN {kind} {data}")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            assert!(found, "no {owner} {kind} record to alter");
        }
        std::fs::write(d.join("dane.zone.signed"), signed + "\n").unwrap();

        let test = zone_text(
            "test.",
            &[
                Rec("ns.test.".into(), "A", "127.0.0.1".into()),
                Rec("dane.test.".into(), "NS", "ns.test.".into()),
                Rec("plain.test.".into(), "NS", "ns.test.".into()),
            ],
        ) + &ds(d, &dane_key);
        std::fs::write(d.join("test.zone"), test).unwrap();
        let test_key = sign(d, "test.", "test.zone");
        let root = zone_text(".", &[Rec("test.".into(), "NS", "ns.test.".into())])
            + "ns.test. IN A 127.0.0.1\n"
            + &ds(d, &test_key);
        std::fs::write(d.join("root.zone"), root).unwrap();
        let root_key = sign(d, ".", "root.zone");
        let anchor_file = d.join("root.anchor");
        let key_text = std::fs::read_to_string(d.join(format!("{root_key}.key"))).unwrap();
        std::fs::write(
            &anchor_file,
            key_text
                .lines()
                .filter(|l| !l.starts_with(';'))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .unwrap();
        let anchor_ds_file = d.join("root.ds");
        std::fs::write(&anchor_ds_file, ds(d, &root_key)).unwrap();
        std::fs::write(d.join("plain.zone"), zone_text("plain.test.", &zones.plain)).unwrap();

        let bind_port = free_port();
        let p = d.display();
        std::fs::write(
            d.join("named.conf"),
            format!(
                "options {{\n directory \"{p}\";\n listen-on port {bind_port} {{ 127.0.0.1; }};\n listen-on-v6 {{ none; }};\n recursion no;\n dnssec-validation no;\n pid-file \"{p}/named.pid\";\n session-keyfile \"{p}/session.key\";\n}};\n\
                 zone \".\" {{ type primary; file \"{p}/root.zone.signed\"; }};\n\
                 zone \"test\" {{ type primary; file \"{p}/test.zone.signed\"; }};\n\
                 zone \"dane.test\" {{ type primary; file \"{p}/dane.zone.signed\"; }};\n\
                 zone \"plain.test\" {{ type primary; file \"{p}/plain.zone\"; }};\n"
            ),
        )
        .unwrap();
        let mut children = vec![spawn(
            d,
            "named",
            "named",
            &["-g", "-c", &format!("{p}/named.conf")],
        )];
        let mut unbound = |name: &str, validate: bool| {
            let port = free_port();
            // Each zone a stub of bind9's port: the glue says port 53, which is not ours.
            let stubs: String = [".", "test.", "dane.test.", "plain.test."]
                .iter()
                .map(|z| {
                    format!("stub-zone:\n  name: \"{z}\"\n  stub-addr: 127.0.0.1@{bind_port}\n")
                })
                .collect();
            let validation = if validate {
                format!(
                    "  module-config: \"validator iterator\"\n  trust-anchor-file: \"{}\"\n  val-log-level: 2\n",
                    anchor_file.display()
                )
            } else {
                "  module-config: \"iterator\"\n".to_owned()
            };
            let conf = d.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  do-not-query-localhost: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{p}\"\n  pidfile: \"{p}/{name}.pid\"\n  use-syslog: no\n  logfile: \"{p}/{name}.log\"\n  do-ip6: no\n  root-hints: \"\"\n  local-zone: \"test.\" nodefault\n  qname-minimisation: no\n  harden-referral-path: no\n{validation}{stubs}"
                ),
            )
            .unwrap();
            children.push(spawn(
                d,
                "unbound",
                name,
                &["-d", "-c", &conf.display().to_string()],
            ));
            SocketAddr::from(([127, 0, 0, 1], port))
        };
        let validating = unbound("validating", true);
        let iterating = unbound("iterating", false);
        let world = World {
            validating,
            iterating,
            authoritative: SocketAddr::from(([127, 0, 0, 1], bind_port)),
            anchor_file,
            anchor_ds_file,
            children,
            dir,
        };
        // Ready when the validating resolver vouches for the root.
        let stub = mailspool_deliver::dnssec::StubResolver::new(Some(validating)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match stub.query(".", hickory_proto::rr::RecordType::SOA).await {
                Ok(a) if a.ad => break,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "the DNS world did not come up: {other:?}; named.log: {}",
                        std::fs::read_to_string(world.dir.path().join("named.out"))
                            .unwrap_or_default()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        world
    }
}

fn spawn(dir: &Path, tool: &str, name: &str, args: &[&str]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
    Command::new(find(tool).unwrap())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}
