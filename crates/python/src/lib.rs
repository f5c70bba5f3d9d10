//! `mailspool._mailspool`, the native part of the Python package `mailspool`: a `Spool`
//! opened for intake and its `send_mail`, which returns once the message is durably
//! queued (one node per recipient), with the GIL released while it parses, writes and
//! commits. The package's `__init__.py` re-exports it; `__init__.pyi` types it.

use std::path::PathBuf;

use mailspool::embed::{ErrorKind, OpenError};
use mailspool::{Delivery, Mailspool, MessageSource, Outcome, SendError, SendMail};
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

pyo3::create_exception!(
    mailspool,
    MailspoolError,
    PyException,
    "A message was not queued (nothing of it is left in the spool)."
);
pyo3::create_exception!(
    mailspool,
    TemporaryFailure,
    MailspoolError,
    "Worth trying again later unchanged (sendmail's exit code 75)."
);
macro_rules! kinds {
    ($($name:ident($base:ident): $doc:literal),* $(,)?) => {
        $(pyo3::create_exception!(mailspool, $name, $base, $doc);)*
        fn exception_type(py: Python<'_>, kind: ErrorKind) -> Bound<'_, pyo3::types::PyType> {
            $(if kind.name() == stringify!($name) {
                return py.get_type::<$name>();
            })*
            py.get_type::<MailspoolError>()
        }
        fn add_exceptions(m: &Bound<'_, PyModule>) -> PyResult<()> {
            m.add("MailspoolError", m.py().get_type::<MailspoolError>())?;
            m.add("TemporaryFailure", m.py().get_type::<TemporaryFailure>())?;
            $(m.add(stringify!($name), m.py().get_type::<$name>())?;)*
            Ok(())
        }
    };
}
kinds! {
    NoRecipients(MailspoolError): "Neither `to` nor the To/Cc/Bcc headers name a recipient.",
    BadAddress(MailspoolError): "An address is malformed or too long.",
    MessageTooLarge(MailspoolError): "The message is over max_message_size (or its header block over its limit).",
    BadMessage(MailspoolError): "The message cannot be read as mail (a NUL in a header line, an unreadable source).",
    NoInput(MailspoolError): "The message file does not exist or cannot be opened.",
    InvalidId(MailspoolError): "The chosen id is malformed (1-64 of A-Z a-z 0-9 . _ + =).",
    IdInUse(MailspoolError): "The chosen id is already queued.",
    SpoolFull(TemporaryFailure): "The disk or quota is full: try again later.",
    SpoolUnavailable(TemporaryFailure): "The spool's database cannot be reached: try again later.",
    Locked(TemporaryFailure): "Someone else holds a lock: try again later.",
    NoPermission(MailspoolError): "The spool is not ours to write (another user's, or read-only).",
    ConfigError(MailspoolError): "The configuration or the spool's settings are wrong.",
    IoError(MailspoolError): "Another system error.",
    NotDelivered(MailspoolError): "Interactive delivery: a recipient was refused for good (not kept, no bounce). `id` and `delivery` (each recipient's result) say what became of the others: delivered, or queued for retry.",
    InternalError(MailspoolError): "A bug in mailspool.",
}

/// The exception for a failure of `kind`, with `kind` and `exit_code` attributes.
fn error(py: Python<'_>, kind: ErrorKind, message: String, exit_code: u8) -> PyErr {
    let err = PyErr::from_type(exception_type(py, kind), message);
    let value = err.value(py);
    // Attributes on a fresh exception instance cannot fail short of memory exhaustion.
    let _ = value.setattr("kind", kind.name());
    let _ = value.setattr("exit_code", exit_code);
    err
}

fn send_error(py: Python<'_>, e: SendError) -> PyErr {
    error(py, e.kind(), e.to_string(), e.exit_code())
}

fn open_error(py: Python<'_>, e: OpenError) -> PyErr {
    let code = match &e {
        OpenError::Config(_) => mailspool::sysexits::CONFIG,
        OpenError::Spool(s) => mailspool::send::spool_exit_code(s),
    };
    error(py, e.kind(), e.to_string(), code)
}

/// A spool opened for intake.
#[pyclass(frozen, module = "mailspool")]
struct Spool {
    inner: Mailspool,
}

/// What `send_mail` queued.
#[pyclass(frozen, get_all, module = "mailspool")]
struct Sent {
    /// The message id (in every node's name).
    id: String,
    /// The envelope sender ("" is the null sender).
    sender: String,
    /// The recipients, one node each.
    recipients: Vec<String>,
    /// The stored message's size in bytes.
    size: u64,
    /// Per-recipient results of the immediate attempt (interactive and background).
    delivery: Option<Vec<Py<DeliveryResult>>>,
}

/// One recipient's result of an immediate delivery attempt.
#[pyclass(frozen, get_all, module = "mailspool")]
struct DeliveryResult {
    recipient: String,
    /// "delivered", "deferred" (queued for retry), "failed" (refused for good: bounced,
    /// or in interactive mode reported instead) or "skipped" (queued; another process,
    /// such as the daemon, is delivering it).
    outcome: &'static str,
    /// The receiving server's reply, or why no server was reached.
    reply: String,
}

/// One queued node (one recipient of a message).
#[pyclass(frozen, get_all, module = "mailspool")]
struct QueueEntry {
    id: String,
    node: String,
    to: String,
    sender: String,
    tier: usize,
    queued_at: u64,
    due_at: u64,
    size: u64,
    held: bool,
    last_error: Option<String>,
}

/// What `Spool.queue()` returns: an iterator over the listing read when it was called.
#[pyclass(frozen, module = "mailspool")]
struct QueueIter {
    entries: std::sync::Mutex<std::vec::IntoIter<mailspool::QueueEntry>>,
}

#[pymethods]
impl QueueIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self) -> Option<QueueEntry> {
        let e = self.entries.lock().ok()?.next()?;
        Some(QueueEntry {
            id: e.id,
            node: e.node,
            to: e.to,
            sender: e.from,
            tier: e.tier,
            queued_at: e.queued_at,
            due_at: e.due_at,
            size: e.size,
            held: e.held,
            last_error: e.last_error,
        })
    }

    fn __length_hint__(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }
}

/// The message argument, owned or borrowed so the GIL can be released while it is read.
enum Input<'py> {
    Bytes(Bound<'py, PyBytes>),
    Owned(Vec<u8>),
    Path(PathBuf),
}

/// An [`Input`] as plain data that may cross into the GIL-free closure.
enum Plain<'a> {
    Bytes(&'a [u8]),
    Path(PathBuf),
}

impl Input<'_> {
    fn plain(&self) -> Plain<'_> {
        match self {
            Input::Bytes(b) => Plain::Bytes(b.as_bytes()),
            Input::Owned(v) => Plain::Bytes(v),
            Input::Path(p) => Plain::Path(p.clone()),
        }
    }
}

impl<'a> Plain<'a> {
    fn source(self) -> MessageSource<'a> {
        match self {
            Plain::Bytes(b) => MessageSource::Bytes(b),
            Plain::Path(p) => MessageSource::Path(p),
        }
    }
}

fn message_input<'py>(message: &Bound<'py, PyAny>) -> PyResult<Input<'py>> {
    if let Ok(b) = message.cast::<PyBytes>() {
        return Ok(Input::Bytes(b.clone()));
    }
    if let Ok(s) = message.cast::<PyString>() {
        return Ok(Input::Owned(s.to_cow()?.into_owned().into_bytes()));
    }
    if message.hasattr("__fspath__")? {
        return Ok(Input::Path(message.extract()?));
    }
    // email.message.EmailMessage (and Message): its own serialisation.
    if message.hasattr("as_bytes")? {
        let b = message.call_method0("as_bytes")?;
        return Ok(Input::Bytes(b.cast_into::<PyBytes>()?));
    }
    if let Ok(v) = message.extract::<Vec<u8>>() {
        return Ok(Input::Owned(v));
    }
    Err(PyTypeError::new_err(format!(
        "message must be bytes, str, a path or an email.message.EmailMessage, not {}",
        message.get_type().name()?
    )))
}

fn recipients(to: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    let Some(to) = to else {
        return Ok(Vec::new());
    };
    // One address as a str, not its characters.
    if let Ok(s) = to.cast::<PyString>() {
        return Ok(vec![s.to_cow()?.into_owned()]);
    }
    let mut out = Vec::new();
    for item in to.try_iter()? {
        out.push(item?.extract::<String>().map_err(|_| {
            PyTypeError::new_err("to must be an address or an iterable of addresses (str)")
        })?);
    }
    Ok(out)
}

fn delivery_mode(word: &str) -> PyResult<Delivery> {
    match word.to_ascii_lowercase().as_str() {
        // "standard" is 0.50's other name for deferred.
        "deferred" | "standard" => Ok(Delivery::Deferred),
        "interactive" => Ok(Delivery::Interactive),
        "background" => Ok(Delivery::Background),
        _ => Err(PyValueError::new_err(format!(
            "delivery must be \"deferred\", \"interactive\" or \"background\", not {word:?}"
        ))),
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Delivered => "delivered",
        Outcome::Deferred => "deferred",
        Outcome::Failed => "failed",
        Outcome::Skipped => "skipped",
    }
}

/// The Python view of what the library queued.
fn sent_to_py(py: Python<'_>, sent: mailspool::Sent) -> PyResult<Sent> {
    let delivery = match &sent.delivery {
        None => None,
        Some(rs) => Some(
            rs.iter()
                .map(|r| {
                    Py::new(
                        py,
                        DeliveryResult {
                            recipient: r.to.clone(),
                            outcome: outcome_name(r.outcome),
                            reply: r.reply.clone(),
                        },
                    )
                })
                .collect::<PyResult<_>>()?,
        ),
    };
    Ok(Sent {
        id: sent.id,
        sender: sent.from,
        recipients: sent.recipients,
        size: sent.size,
        delivery,
    })
}

#[pymethods]
impl Spool {
    /// Open a spool for intake. `config`: a mailspool.toml; without it the spool is found
    /// as the `mailspool` command finds it ($MAILSPOOL_CONFIG, the configuration files,
    /// the default). `spool`: a directory or postgresql:// URL overriding the
    /// configuration's (also $MAILSPOOL_SPOOL).
    #[new]
    #[pyo3(signature = (config=None, *, spool=None))]
    fn new(py: Python<'_>, config: Option<PathBuf>, spool: Option<PathBuf>) -> PyResult<Spool> {
        let opened = py.detach(|| Mailspool::discover(config.as_deref(), spool.as_deref()));
        Ok(Spool {
            inner: opened.map_err(|e| open_error(py, e))?,
        })
    }

    /// Queue a message; returns once it is durably in the spool. See the package's
    /// documentation (`help(mailspool)`).
    #[pyo3(signature = (message, to=None, sender=None, delivery="deferred", id=None))]
    fn send_mail(
        &self,
        py: Python<'_>,
        message: &Bound<'_, PyAny>,
        to: Option<&Bound<'_, PyAny>>,
        sender: Option<String>,
        delivery: &str,
        id: Option<String>,
    ) -> PyResult<Sent> {
        let input = message_input(message)?;
        let to = recipients(to)?;
        let mode = delivery_mode(delivery)?;
        let plain = input.plain();
        // Parsing, writing, fsync and the commit run without the GIL: other Python
        // threads go on meanwhile (and may call send_mail on the same Spool).
        let sent = py
            .detach(|| {
                let mut mail = SendMail::new(plain.source()).to(to);
                mail.from = sender;
                mail.id = id;
                mail.delivery = mode;
                self.inner.send_mail(mail)
            })
            .map_err(|e| send_error(py, e))?;
        if mode == Delivery::Interactive
            && let Some((message, code)) = mailspool::embed::not_delivered(&sent)
        {
            let err = error(py, ErrorKind::NotDelivered, message, code);
            let sent = sent_to_py(py, sent)?;
            let value = err.value(py);
            value.setattr("id", sent.id)?;
            value.setattr("delivery", sent.delivery)?;
            return Err(err);
        }
        sent_to_py(py, sent)
    }

    /// Queue many messages with shared disk flushes (far faster than one call each).
    /// Returns, in order, a `Sent` or the `MailspoolError` (not raised) for each
    /// message; each message is all or nothing, like `send_mail` in deferred mode.
    #[pyo3(signature = (messages, to=None, sender=None))]
    fn send_many(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        to: Option<&Bound<'_, PyAny>>,
        sender: Option<String>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let inputs = messages
            .try_iter()?
            .map(|m| message_input(&m?))
            .collect::<PyResult<Vec<_>>>()?;
        let to = recipients(to)?;
        let plains: Vec<Plain<'_>> = inputs.iter().map(Input::plain).collect();
        let results = py.detach(|| {
            self.inner.send_many(plains.into_iter().map(|plain| {
                let mut mail = SendMail::new(plain.source()).to(to.iter().cloned());
                mail.from = sender.clone();
                mail
            }))
        });
        results
            .into_iter()
            .map(|r| match r {
                Ok(sent) => Ok(Py::new(py, sent_to_py(py, sent)?)?.into_any()),
                Err(e) => Ok(send_error(py, e).into_value(py).into_any()),
            })
            .collect()
    }

    /// Every queued node (one per recipient): every tier, then the held ones.
    fn queue(&self, py: Python<'_>) -> PyResult<QueueIter> {
        // Read without the GIL; the Python objects are made one at a time as the
        // caller iterates.
        let entries = py.detach(|| self.inner.queue()).map_err(|e| {
            let kind = mailspool::embed::spool_error_kind(&e);
            error(
                py,
                kind,
                e.to_string(),
                mailspool::send::spool_exit_code(&e),
            )
        })?;
        Ok(QueueIter {
            entries: std::sync::Mutex::new(entries.into_iter()),
        })
    }

    /// Where the spool is: its directory, or its database URL without the password.
    #[getter]
    fn location(&self) -> String {
        self.inner.config().spool_location()
    }

    fn __repr__(&self) -> String {
        format!("mailspool.Spool({:?})", self.location())
    }
}

#[pymethods]
impl Sent {
    fn __repr__(&self) -> String {
        format!(
            "mailspool.Sent(id={:?}, recipients={:?})",
            self.id, self.recipients
        )
    }
}

#[pymethods]
impl DeliveryResult {
    fn __repr__(&self) -> String {
        format!(
            "mailspool.DeliveryResult({:?}, {:?}, {:?})",
            self.recipient, self.outcome, self.reply
        )
    }
}

#[pymethods]
impl QueueEntry {
    fn __repr__(&self) -> String {
        format!(
            "mailspool.QueueEntry(id={:?}, to={:?}, tier={}, held={})",
            self.id, self.to, self.tier, self.held
        )
    }
}

#[pymodule]
fn _mailspool(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Spool>()?;
    m.add_class::<Sent>()?;
    m.add_class::<DeliveryResult>()?;
    m.add_class::<QueueEntry>()?;
    m.add_class::<QueueIter>()?;
    add_exceptions(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
