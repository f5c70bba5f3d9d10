//! Hosts as hosts: network namespaces made by the test, each with its own address on a
//! bridge of the test's own (in a hub namespace, so nothing touches the machine's
//! own interfaces or routes). Addresses are in 198.18.0.0/15, the range set aside for
//! benchmarking network devices (RFC 2544), and exist only inside these namespaces.
//!
//! Needs root and iproute2 (`ip`); [`Net::new`] says why it cannot run otherwise, so a
//! test can skip (or, under `CI=true`, fail). Everything is deleted when the `Net` drops.

use std::os::fd::AsRawFd;
use std::process::Command;

/// The test's network: a hub namespace with a bridge, and members on it.
pub struct Net {
    prefix: String,
    hub: String,
    members: Vec<String>,
}

/// One host on the network: its namespace and address.
#[derive(Clone, Debug)]
pub struct Member {
    pub ns: String,
    pub addr: std::net::Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Net {
    /// A new network, or why there cannot be one here.
    pub fn new() -> Result<Net, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("network namespaces need root".into());
        }
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "ms{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let hub = format!("{prefix}hub");
        ip(&["netns", "add", &hub])?;
        let net = Net {
            prefix,
            hub,
            members: Vec::new(),
        };
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &net.hub, "link", "set", "br0", "up"])?;
        ip(&["-n", &net.hub, "link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// Add a host named `name` at 198.18.0.`host`.
    pub fn add(&mut self, name: &str, host: u8) -> Result<Member, String> {
        let ns = format!("{}{name}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.members.push(ns.clone());
        let port = format!("p{host}");
        // Made in the hub (its end keeps its name there), the other end moved to the
        // member as eth0: no interface ever appears in the machine's own namespace.
        ip(&[
            "-n", &self.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&["-n", &self.hub, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &self.hub, "link", "set", &port, "up"])?;
        let addr = std::net::Ipv4Addr::new(198, 18, 0, host);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(Member { ns, addr })
    }

    /// Cut a member off the network (its cable pulled), or plug it in again.
    pub fn link(&self, m: &Member, up: bool) -> Result<(), String> {
        ip(&[
            "-n",
            &m.ns,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.members.iter().chain(std::iter::once(&self.hub)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl Member {
    /// `program` run in this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Run `f` on a thread inside this host's namespace: sockets it makes (a listener,
    /// a connection) stay there, and may be used from any thread afterwards.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("the namespace's file");
            // SAFETY: setns on a valid descriptor changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the namespace thread")
    }

    /// A TCP listener on this host's address (port 0: any).
    pub fn listen(&self, port: u16) -> std::net::TcpListener {
        let addr = std::net::SocketAddr::from((self.addr, port));
        let l = self.run(move || std::net::TcpListener::bind(addr).expect("bind"));
        l.set_nonblocking(true).unwrap();
        l
    }

    /// A TCP connection from this host.
    pub fn connect(&self, to: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
        self.run(move || {
            std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(5))
        })
    }
}
