//! `sendmail -bs` (Symfony Mailer's default transport) run by a user who does not own
//! the spool: the SMTP dialogue is the listener's, on stdin and stdout, and each
//! message it accepts is handed to the setgid drop (`sendmail -i -f FROM RCPT...`),
//! exactly as that user's plain `sendmail` would. 250 after DATA means the drop said 0.

use std::io::{Seek, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use mailspool_spool::{Committed, Intake, SpoolError, Staged};

/// Takes messages into the drop.
pub struct DropIntake {
    /// The setgid drop program.
    pub program: PathBuf,
}

impl Intake for DropIntake {
    fn new_id(&self) -> String {
        ulid::Ulid::generate().to_string()
    }
    fn check_envelope(&self, id: &str, from: &str, to: &[String]) -> mailspool_spool::Result<()> {
        mailspool_spool::check_envelope_names(id, from, to)
    }
    fn stage(self: Arc<Self>, id: &str) -> mailspool_spool::Result<Box<dyn Staged>> {
        let dir = std::env::temp_dir();
        // Unnamed (O_TMPFILE): nothing of it is left anywhere if we die.
        let fd = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .map_err(|e| SpoolError::io_path("make a temporary file in", &dir, e.into()))?;
        Ok(Box::new(DropStage {
            program: self.program.clone(),
            id: id.to_owned(),
            file: std::fs::File::from(fd),
            written: 0,
        }))
    }
}

#[derive(Debug)]
struct DropStage {
    program: PathBuf,
    id: String,
    file: std::fs::File,
    written: u64,
}

impl Write for DropStage {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Staged for DropStage {
    fn id(&self) -> &str {
        &self.id
    }
    fn written(&self) -> u64 {
        self.written
    }
    fn commit(
        mut self: Box<Self>,
        from: &str,
        to: &[String],
    ) -> mailspool_spool::Result<Committed> {
        let io = |e: std::io::Error| SpoolError::io_path("hand the message to", &self.program, e);
        self.file.rewind().map_err(io)?;
        let sender = if from.is_empty() { "<>" } else { from };
        // Addresses never start with '-' (refused at RCPT): none is taken for an option.
        let out = Command::new(&self.program)
            .arg0("sendmail")
            .arg("-i")
            .arg("-f")
            .arg(sender)
            .args(to)
            .stdin(Stdio::from(self.file.try_clone().map_err(io)?))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(io)?;
        if out.status.success() {
            return Ok(Committed {
                id: self.id.clone(),
                nodes: Vec::new(),
                size: self.written,
            });
        }
        let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        // The drop's 75 is a full disk (or below the reserve): a temporary refusal.
        let kind = if out.status.code() == Some(75) {
            std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error())
        } else {
            std::io::Error::other(why.clone())
        };
        tracing::warn!(status = ?out.status.code(), error = %mailspool_spool::escape(&why), "the drop refused a message");
        Err(io(kind))
    }
    fn into_file_stage(
        self: Box<Self>,
    ) -> std::result::Result<mailspool_spool::Stage<Arc<mailspool_spool::Spool>>, Box<dyn Staged>>
    {
        Err(self)
    }
}
