//! Throw-away PostgreSQL for tests and benchmarks: a cluster under a temporary
//! directory on a free port (run as the `postgres` user when we are root, as initdb
//! requires), or the one `.ci/run` started (`MAILSPOOL_TEST_PG`, a superuser URL), in
//! which each test gets a database of its own that is dropped when it ends.
//!
//! Without PostgreSQL's programs a test skips on a developer's machine and fails with
//! `CI=true` (as the other tests that need an outside program do).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A cluster this process started; stopped (and its directory removed) on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1 (or on `listen`).
    pub port: u16,
    as_postgres: bool,
    /// The command its programs run under (`ip netns exec NS`: a host of its own).
    wrap: Vec<String>,
}

/// Where and how a cluster runs, beyond [`Cluster::start`]'s defaults.
#[derive(Debug, Clone, Default)]
pub struct Place {
    /// Run its programs under this command (`["ip", "netns", "exec", "db1"]`).
    pub wrap: Vec<String>,
    /// Listen on this address instead of 127.0.0.1 (clients in other namespaces);
    /// connections from 198.18.0.0/15 are trusted.
    pub listen: Option<String>,
    /// More `postgresql.conf` lines.
    pub conf: String,
    /// This port rather than a free one (a namespace of its own has them all).
    pub port: Option<u16>,
}

/// A database for one test.
pub struct TestDb {
    /// Its URL (schema migrated).
    pub url: String,
    admin: String,
    name: String,
    /// The cluster, when this test started its own.
    pub cluster: Option<Cluster>,
}

/// Where PostgreSQL's server programs are: `initdb` on PATH, else Debian's newest
/// `/usr/lib/postgresql/<v>/bin`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// Say why PostgreSQL is missing: skip, or (CI) fail.
fn missing(why: &str) -> Option<TestDb> {
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("PostgreSQL is needed under CI=true: {why}");
    }
    eprintln!("skipped: {why}");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    /// initdb and start a cluster (fsync off when `fast`: tests, not benchmarks).
    pub fn start(fast: bool) -> Result<Cluster, String> {
        Cluster::start_with(fast, None)
    }

    /// [`Cluster::start`], serving TLS with this certificate and key (PEM) when given.
    pub fn start_with(fast: bool, tls: Option<(&str, &str)>) -> Result<Cluster, String> {
        Cluster::start_at(fast, tls, Place::default())
    }

    fn empty(place: &Place) -> Result<Cluster, String> {
        let bin = bin_dir().ok_or("no PostgreSQL server programs (initdb) found")?;
        let as_postgres = rustix::process::geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("mailspool-pg")
            .tempdir()
            .map_err(|e| e.to_string())?;
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("cannot chown the cluster directory to postgres".into());
            }
        }
        Ok(Cluster {
            dir,
            bin,
            port: place.port.unwrap_or_else(free_port),
            as_postgres,
            wrap: place.wrap.clone(),
        })
    }

    /// [`Cluster::start_with`], at `place`.
    pub fn start_at(
        fast: bool,
        tls: Option<(&str, &str)>,
        place: Place,
    ) -> Result<Cluster, String> {
        let cluster = Cluster::empty(&place)?;
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        let mut conf = format!(
            "listen_addresses = '{}'\nport = {}\nunix_socket_directories = '{}'\n\
             max_connections = 300\nshared_buffers = 128MB\n{}",
            place.listen.as_deref().unwrap_or("127.0.0.1"),
            cluster.port,
            cluster.dir.path().display(),
            place.conf,
        );
        if place.listen.is_some() {
            cluster.trust_test_network()?;
        }
        if fast {
            conf.push_str("fsync = off\nfull_page_writes = off\n");
        }
        if let Some((cert, key)) = tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, pem).map_err(|e| e.to_string())?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| e.to_string())?;
                if cluster.as_postgres {
                    Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(&path)
                        .status()
                        .map_err(|e| e.to_string())?;
                }
            }
            conf.push_str("ssl = on\n");
        }
        std::fs::write(data.join("postgresql.auto.conf"), conf).map_err(|e| e.to_string())?;
        cluster.ctl("start")?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Trust clients (and standbys) on the tests' own network, 198.18.0.0/15.
    fn trust_test_network(&self) -> Result<(), String> {
        let hba = self.data().join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
        if !text.contains("198.18.0.0/15") {
            text.push_str(
                "host all all 198.18.0.0/15 trust\nhost replication all 198.18.0.0/15 trust\n",
            );
            std::fs::write(&hba, text).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A streaming standby of `primary`, at `place`: a base backup taken over the
    /// primary's socket, started in recovery. Once promoted it has no synchronous
    /// standby of its own (`synchronous_standby_names = ''`), or it would wait forever.
    pub fn standby_of(primary: &Cluster, place: Place) -> Result<Cluster, String> {
        let cluster = Cluster::empty(&place)?;
        let data = cluster.data();
        let source = format!(
            "host={} port={} user=postgres application_name=standby",
            primary.dir.path().display(),
            primary.port
        );
        cluster.run(
            "pg_basebackup",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-d",
                &source,
                "-R",
                "-X",
                "stream",
                // An immediate checkpoint, not the next timed one (minutes away).
                "-c",
                "fast",
                "--no-sync",
            ],
        )?;
        // Later lines win: the backup brought the primary's own settings.
        let auto = data.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&auto).map_err(|e| e.to_string())?;
        conf.push_str(&format!(
            "\nlisten_addresses = '{}'\nport = {}\nunix_socket_directories = '{}'\n\
             synchronous_standby_names = ''\n{}",
            place.listen.as_deref().unwrap_or("127.0.0.1"),
            cluster.port,
            cluster.dir.path().display(),
            place.conf,
        ));
        std::fs::write(&auto, conf).map_err(|e| e.to_string())?;
        cluster.trust_test_network()?;
        cluster.ctl("start")?;
        Ok(cluster)
    }

    /// Promote a standby to primary (and wait until it takes writes).
    pub fn promote(&self) -> Result<(), String> {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["promote", "-w", "-D", data.to_str().unwrap_or_default()],
        )
    }

    /// Stop it the way a crash does: no checkpoint, sessions cut (`-m immediate`).
    pub fn kill(&self) -> Result<(), String> {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-m",
                "immediate",
                "-w",
                "-D",
                data.to_str().unwrap_or_default(),
            ],
        )
    }

    /// Connection settings for database `db` over its Unix socket (reachable from any
    /// network namespace), in the key=value form.
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.dir.path().display(),
            self.port
        )
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut cmd = match self.wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest);
                c
            }
            None if self.as_postgres => Command::new("runuser"),
            None => Command::new(&path),
        };
        if self.as_postgres {
            if !self.wrap.is_empty() {
                cmd.arg("runuser");
            }
            cmd.args(["-u", "postgres", "--"]).arg(&path);
        } else if !self.wrap.is_empty() {
            cmd.arg(&path);
        }
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{program} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn ctl(&self, what: &str) -> Result<(), String> {
        let data = self.data();
        let log = self.dir.path().join("log");
        let mut args = vec![
            what,
            "-D",
            data.to_str().unwrap_or_default(),
            "-l",
            log.to_str().unwrap_or_default(),
            "-w",
        ];
        if what != "start" {
            args.extend(["-m", "fast"]);
        }
        self.run("pg_ctl", &args)
    }

    /// Stop the server (fast shutdown: sessions are cut, as in a failover).
    pub fn stop(&self) -> Result<(), String> {
        self.ctl("stop")
    }

    /// Start it again after [`Cluster::stop`].
    pub fn start_again(&self) -> Result<(), String> {
        self.ctl("start")
    }

    /// Restart it (what a minor upgrade or a crash recovery looks like to clients).
    pub fn restart(&self) -> Result<(), String> {
        self.ctl("restart")
    }

    /// The superuser URL of its `postgres` database.
    pub fn admin_url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.ctl("stop");
    }
}

/// Run SQL as the superuser of `admin` (on a thread of its own, so that a test on a
/// runtime may call it).
pub fn admin_sql(admin: &str, sql: &str) -> Result<(), String> {
    let (admin, sql) = (admin.to_owned(), sql.to_owned());
    std::thread::spawn(move || admin_sql_here(&admin, &sql))
        .join()
        .map_err(|_| "the SQL thread panicked".to_owned())?
}

fn admin_sql_here(admin: &str, sql: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let task = tokio::spawn(conn);
        let r = c.batch_execute(sql).await.map_err(|e| e.to_string());
        drop(c);
        let _ = task.await;
        r
    })
}

impl TestDb {
    /// A fresh, migrated database: in the cluster `MAILSPOOL_TEST_PG` names, else in a
    /// cluster of this test's own. `None` (skip) without PostgreSQL, except under CI.
    pub fn new() -> Option<TestDb> {
        let (admin, cluster) = match std::env::var("MAILSPOOL_TEST_PG") {
            Ok(url) if !url.is_empty() => (url, None),
            _ => match Cluster::start(true) {
                Ok(c) => (c.admin_url(), Some(c)),
                Err(e) => return missing(&e),
            },
        };
        let name = format!("t_{}", ulid::Ulid::generate().to_string().to_lowercase());
        if let Err(e) = admin_sql(&admin, &format!("CREATE DATABASE {name}")) {
            return missing(&format!("cannot create a test database: {e}"));
        }
        let url = match admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => return missing("MAILSPOOL_TEST_PG is not a postgresql:// URL"),
        };
        let migrated = {
            let url = url.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(crate::migrate(&url, None))
                    .map(|_| ())
            })
            .join()
            .expect("the migration thread")
        };
        migrated.expect("migrate the test database");
        Some(TestDb {
            url,
            admin,
            name,
            cluster,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.cluster.is_none() {
            let _ = admin_sql(
                &self.admin,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            );
        }
    }
}
