//! A GlusterFS volume served from one host of the test's network and mounted (FUSE) by
//! others: a network file system this machine can run whole, server and clients, where
//! the kernel has no NFS. Like NFS it keeps one inode number and a true link count for
//! every name of a file, `link` is atomic and says EEXIST, and each client caches
//! attributes for a second (`attribute-timeout`), so one host sees another's changes
//! late, as NFS's attribute cache makes it.
//!
//! glusterd runs with a working directory, socket and volume of the test's own (nothing
//! under /var/lib/glusterd); its brick and the FUSE clients reach each other only over
//! the test's network namespaces. Needs root, /dev/fuse and Debian's glusterfs-server
//! and glusterfs-client (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::have;
use crate::support::netns::{Member, Net};

const GLUSTERD: &str = "/usr/sbin/glusterd";
const GLUSTERFS: &str = "/usr/sbin/glusterfs";
const GLUSTER: &str = "/usr/sbin/gluster";

pub struct Gluster {
    pub dir: tempfile::TempDir,
    pub mounts: Vec<PathBuf>,
    volume: String,
    glusterd: Child,
    _net: Net,
}

/// `program` with only its network namespace set to `member`'s (mounts stay the
/// machine's, unlike `ip netns exec`, so a FUSE mount made this way is seen by all).
fn in_net(member: &Member, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/{}", member.ns))
        .arg(program);
    c
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mounted(path: &Path) -> bool {
    let want = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*want))
}

impl Gluster {
    /// A volume served from 198.18.0.30 and mounted from `hosts` hosts (198.18.0.40+),
    /// or why not here.
    pub fn start(hosts: usize) -> Result<Gluster, String> {
        // Full paths: root's PATH may lack /usr/sbin.
        for p in [GLUSTERD, GLUSTERFS, GLUSTER, "nsenter"] {
            if !have(p) {
                return Err(format!(
                    "{p} is not installed (apt install glusterfs-server glusterfs-client)"
                ));
            }
        }
        if !Path::new("/dev/fuse").exists() {
            return Err("no /dev/fuse".into());
        }
        let mut net = Net::new()?;
        let server = net.add("gsrv", 30)?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path().to_owned();
        for sub in ["state", "brick", "logs"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::fs::write(
            d.join("glusterd.vol"),
            format!(
                "volume management\n    type mgmt/glusterd\n    option working-directory {}\n    \
                 option transport-type socket\n    option transport.socket.listen-port 24007\n    \
                 option ping-timeout 0\n    option event-threads 1\n    \
                 option glusterd-sockfile {}\nend-volume\n",
                d.join("state").display(),
                d.join("glusterd.sock").display()
            ),
        )
        .unwrap();
        let socket = d.join("glusterd.sock");
        let glusterd = in_net(&server, GLUSTERD)
            .arg("-N")
            .arg(format!("--volfile={}", d.join("glusterd.vol").display()))
            .arg(format!(
                "--log-file={}",
                d.join("logs/glusterd.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("glusterd: {e}"))?;
        let volume = format!("ms{}", std::process::id());
        let mut fs = Gluster {
            dir,
            mounts: Vec::new(),
            volume,
            glusterd,
            _net: net,
        };
        let cli = |args: &[&str]| {
            output(
                Command::new(GLUSTER)
                    .arg(format!("--glusterd-sock={}", socket.display()))
                    .arg("--mode=script")
                    .args(args),
            )
        };
        let start = Instant::now();
        while cli(&["volume", "list"]).is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err("glusterd did not answer within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let brick = format!("{}:{}", server.addr, d.join("brick").display());
        // `force`: the brick is a directory on the root file system, not its own disk.
        cli(&["volume", "create", &fs.volume, &brick, "force"])?;
        cli(&["volume", "start", &fs.volume])?;
        for i in 0..hosts {
            let host = fs._net.add(&format!("g{i}"), 40 + i as u8)?;
            let mount = d.join(format!("mount{i}"));
            std::fs::create_dir(&mount).unwrap();
            output(
                in_net(&host, GLUSTERFS)
                    .arg(format!("--volfile-server={}", server.addr))
                    .arg(format!("--volfile-id={}", fs.volume))
                    .arg(format!(
                        "--log-file={}",
                        d.join(format!("logs/client{i}.log")).display()
                    ))
                    .arg(&mount),
            )?;
            fs.mounts.push(mount.clone());
            let start = Instant::now();
            while !mounted(&mount) {
                if start.elapsed() > Duration::from_secs(20) {
                    return Err(format!("{} was not mounted within 20 s", mount.display()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(fs)
    }
}

impl Drop for Gluster {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        // The brick process glusterd started: its pid files name the volume.
        let pids = Path::new("/var/run/gluster/vols").join(&self.volume);
        for entry in std::fs::read_dir(&pids).into_iter().flatten().flatten() {
            if let Some(pid) = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a pid read from the volume's own pid file.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&pids);
        let _ = self.glusterd.kill();
        let _ = self.glusterd.wait();
    }
}
