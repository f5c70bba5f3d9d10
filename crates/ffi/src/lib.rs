//! mailspool's C ABI. A handle (`mailspool_t`) is a spool opened for intake, the same as
//! the Rust library's `Mailspool`: `mailspool_send_mail` returns once the message is
//! durably queued (one node per recipient), exactly as `mailspool send` does.
//!
//! Rules of the boundary:
//! - Every function returns a status: `MAILSPOOL_OK` (0) or a `MAILSPOOL_E_*` code; the
//!   message of the last failure on the calling thread is `mailspool_last_error()`.
//! - No panic crosses it: one becomes `MAILSPOOL_E_INTERNAL`.
//! - A handle may be used by many threads at once; close it once, when none uses it.
//! - Strings are NUL-terminated UTF-8. Strings the library returns (`id_out`,
//!   `json_out`) are the caller's, freed with `mailspool_free`.

#![allow(clippy::missing_safety_doc)] // The safety rules are the C header's comments.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use mailspool::embed::{ErrorKind, OpenError};
use mailspool::{Delivery, Mailspool, MessageSource, SendError, SendMail};

/// A spool opened for intake. Opaque to C.
pub struct Handle {
    spool: Mailspool,
}

/// Success. The codes are those of the Rust library's `ErrorKind` (a test holds them
/// equal).
pub const MAILSPOOL_OK: i32 = 0;
/// A required argument was NULL or malformed (bad UTF-8, an unknown delivery mode).
pub const MAILSPOOL_E_INVALID_ARGUMENT: i32 = 1;
/// Neither the arguments nor the headers name a recipient.
pub const MAILSPOOL_E_NO_RECIPIENTS: i32 = 2;
/// An address is malformed or too long.
pub const MAILSPOOL_E_BAD_ADDRESS: i32 = 3;
/// The message is over max_message_size (or its header block over its limit).
pub const MAILSPOOL_E_MESSAGE_TOO_LARGE: i32 = 4;
/// The message cannot be read as mail (a NUL in a header, an unreadable source).
pub const MAILSPOOL_E_BAD_MESSAGE: i32 = 5;
/// The message file does not exist or cannot be opened.
pub const MAILSPOOL_E_NO_INPUT: i32 = 6;
/// The chosen id is malformed.
pub const MAILSPOOL_E_INVALID_ID: i32 = 7;
/// The chosen id is already queued.
pub const MAILSPOOL_E_ID_IN_USE: i32 = 8;
/// The disk or quota is full: try again later.
pub const MAILSPOOL_E_SPOOL_FULL: i32 = 9;
/// The spool's database cannot be reached: try again later.
pub const MAILSPOOL_E_SPOOL_UNAVAILABLE: i32 = 10;
/// Someone else holds the lock: try again later.
pub const MAILSPOOL_E_LOCKED: i32 = 11;
/// The spool is not ours to write (another user's, or read-only).
pub const MAILSPOOL_E_NO_PERMISSION: i32 = 12;
/// The configuration or the spool's settings are wrong.
pub const MAILSPOOL_E_CONFIG: i32 = 13;
/// Another system error.
pub const MAILSPOOL_E_IO: i32 = 14;
/// Interactive delivery: a recipient failed for good (not kept, no bounce); the others
/// were delivered or stay queued, as `mailspool_last_error()` says, one by one.
pub const MAILSPOOL_E_NOT_DELIVERED: i32 = 15;
/// A bug in mailspool (a panic, caught). The handle is still usable.
pub const MAILSPOOL_E_INTERNAL: i32 = 16;

/// A failed call: its kind, what to tell the user, and sendmail's exit code for it.
struct Failure {
    kind: ErrorKind,
    message: String,
    exit_code: u8,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            kind: ErrorKind::InvalidArgument,
            message: message.into(),
            exit_code: mailspool::sysexits::USAGE,
        }
    }
}

impl From<SendError> for Failure {
    fn from(e: SendError) -> Failure {
        Failure {
            kind: e.kind(),
            exit_code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

impl From<OpenError> for Failure {
    fn from(e: OpenError) -> Failure {
        let exit_code = match &e {
            OpenError::Config(_) => mailspool::sysexits::CONFIG,
            OpenError::Spool(e) => mailspool::send::spool_exit_code(e),
        };
        Failure {
            kind: e.kind(),
            message: e.to_string(),
            exit_code,
        }
    }
}

thread_local! {
    /// The last failure on this thread: its message (NUL-terminated) and exit code.
    static LAST_ERROR: RefCell<(CString, i32)> = RefCell::new((CString::default(), 0));
}

fn set_last_error(message: &str, exit_code: u8) {
    // A NUL inside a message would cut it short in C: show it escaped instead.
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = (text, i32::from(exit_code)));
}

/// Run `f`, turning its failure or panic into a status code and the thread's last error.
fn status(f: impl FnOnce() -> Result<(), Failure>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error("", 0);
            MAILSPOOL_OK
        }
        Ok(Err(failure)) => {
            set_last_error(&failure.message, failure.exit_code);
            failure.kind as i32
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(
                &format!("internal error in mailspool (please report it): {what}"),
                mailspool::sysexits::SOFTWARE,
            );
            MAILSPOOL_E_INTERNAL
        }
    }
}

/// A C string argument, `None` for NULL.
unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives the call.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map(Some)
        .map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

fn handle<'a>(h: *const Handle) -> Result<&'a Handle, Failure> {
    // SAFETY: a non-NULL handle came from mailspool_open and is not closed yet.
    unsafe { h.as_ref() }.ok_or_else(|| Failure::invalid("the mailspool_t handle is NULL"))
}

fn give_string(out: *mut *mut c_char, s: String) {
    if !out.is_null() {
        let s = CString::new(s.replace('\0', "\\0")).unwrap_or_default();
        // SAFETY: `out` is non-NULL and points to writable storage for a pointer.
        unsafe { *out = s.into_raw() };
    }
}

/// Open a spool for intake. `config_path`: a configuration file, or NULL to find it as
/// the `mailspool` command does ($MAILSPOOL_CONFIG, ~/.config/mailspool/mailspool.toml,
/// /etc/mailspool/mailspool.toml, else the defaults). `spool`: a spool directory or
/// `postgresql://` URL overriding the configuration's, or NULL ($MAILSPOOL_SPOOL, then
/// the configuration). On success `*out` is a handle to close with `mailspool_close`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mailspool_open(
    config_path: *const c_char,
    spool: *const c_char,
    out: *mut *mut Handle,
) -> i32 {
    status(|| {
        if out.is_null() {
            return Err(Failure::invalid("out is NULL"));
        }
        // SAFETY: both are NULL or NUL-terminated strings (the header's contract).
        let config = unsafe { opt_str(config_path, "config_path") }?.map(PathBuf::from);
        let spool = unsafe { opt_str(spool, "spool") }?.map(PathBuf::from);
        let opened = Mailspool::discover(config.as_deref(), spool.as_deref())?;
        let h = Box::new(Handle { spool: opened });
        // SAFETY: checked non-NULL above.
        unsafe { *out = Box::into_raw(h) };
        Ok(())
    })
}

/// Close a handle from `mailspool_open` (NULL is ignored). No call may be using it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mailspool_close(h: *mut Handle) {
    if !h.is_null() {
        // SAFETY: the handle came from mailspool_open and is closed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(h) })));
    }
}

/// Queue a message held in memory: `message_len` bytes at `message` (headers, a blank
/// line, the body; LF or CRLF line ends). `to`: `to_count` recipients, or 0 to take
/// them from To/Cc/Bcc. `sender`: the envelope sender, "" for the null sender, NULL to
/// take it from From. `delivery`: `MAILSPOOL_DEFERRED` (queue and return),
/// `MAILSPOOL_INTERACTIVE` (deliver now; a recipient refused for good is not kept nor
/// bounced and the call fails with `MAILSPOOL_E_NOT_DELIVERED` and exit code 69, its
/// message naming each recipient's result; one that could not be reached now stays
/// queued for retry, which is success: the message was accepted) or
/// `MAILSPOOL_BACKGROUND` (try now, queue what is not delivered, bounce what fails). `id`:
/// a message id to use (refused when queued already), or NULL for a new one. On
/// success, when `id_out` is not NULL, `*id_out` is the message id (free it with
/// `mailspool_free`). Bcc is never stored; MAILSPOOL_OK means durably queued.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // The C signature: one call, no option struct to fill.
pub unsafe extern "C" fn mailspool_send_mail(
    h: *const Handle,
    message: *const u8,
    message_len: usize,
    to: *const *const c_char,
    to_count: usize,
    sender: *const c_char,
    delivery: i32,
    id: *const c_char,
    id_out: *mut *mut c_char,
) -> i32 {
    status(|| {
        if message.is_null() && message_len > 0 {
            return Err(Failure::invalid("message is NULL"));
        }
        let bytes: &[u8] = if message_len == 0 {
            &[]
        } else {
            // SAFETY: the caller passes `message_len` readable bytes at `message`.
            unsafe { std::slice::from_raw_parts(message, message_len) }
        };
        // SAFETY: the remaining pointers follow the header's contract.
        unsafe {
            send(
                h,
                MessageSource::Bytes(bytes),
                (to, to_count),
                sender,
                delivery,
                id,
                id_out,
            )
        }
    })
}

/// As `mailspool_send_mail`, the message read from the file at `path`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mailspool_send_file(
    h: *const Handle,
    path: *const c_char,
    to: *const *const c_char,
    to_count: usize,
    sender: *const c_char,
    delivery: i32,
    id: *const c_char,
    id_out: *mut *mut c_char,
) -> i32 {
    status(|| {
        // SAFETY: NULL or a NUL-terminated string.
        let Some(path) = (unsafe { opt_str(path, "path") })? else {
            return Err(Failure::invalid("path is NULL"));
        };
        let source = MessageSource::Path(Path::new(path).to_owned());
        // SAFETY: the remaining pointers follow the header's contract.
        unsafe { send(h, source, (to, to_count), sender, delivery, id, id_out) }
    })
}

/// `count` strings at `array` (NULL allowed when `count` is 0).
unsafe fn string_array(array: *const *const c_char, count: usize) -> Result<Vec<String>, Failure> {
    if array.is_null() && count > 0 {
        return Err(Failure::invalid("to is NULL but to_count is not 0"));
    }
    // Not sized by `count` up front: a wrong count must not ask for a huge allocation.
    let mut out = Vec::new();
    for i in 0..count {
        // SAFETY: `array` holds `count` pointers (checked non-NULL above).
        let p = unsafe { *array.add(i) };
        match unsafe { opt_str(p, "a recipient") }? {
            Some(r) => out.push(r.to_owned()),
            None => return Err(Failure::invalid(format!("to[{i}] is NULL"))),
        }
    }
    Ok(out)
}

unsafe fn send(
    h: *const Handle,
    message: MessageSource<'_>,
    (to, to_count): (*const *const c_char, usize),
    sender: *const c_char,
    delivery: i32,
    id: *const c_char,
    id_out: *mut *mut c_char,
) -> Result<(), Failure> {
    let h = handle(h)?;
    let delivery = match delivery {
        0 => Delivery::Deferred,
        1 => Delivery::Interactive,
        2 => Delivery::Background,
        n => return Err(Failure::invalid(format!("unknown delivery mode {n}"))),
    };
    // SAFETY: `to` holds `to_count` strings (the header's contract).
    let recipients = unsafe { string_array(to, to_count) }?;
    let mut mail = SendMail::new(message).to(recipients);
    mail.from = unsafe { opt_str(sender, "sender") }?.map(str::to_owned);
    mail.id = unsafe { opt_str(id, "id") }?.map(str::to_owned);
    mail.delivery = delivery;
    let sent = h.spool.send_mail(mail)?;
    if delivery == Delivery::Interactive
        && let Some((message, exit_code)) = mailspool::embed::not_delivered(&sent)
    {
        return Err(Failure {
            kind: ErrorKind::NotDelivered,
            message,
            exit_code,
        });
    }
    give_string(id_out, sent.id);
    Ok(())
}

/// Queue `count` messages (`messages[i]`, `lengths[i]` bytes each) with shared disk
/// flushes: far faster than one `mailspool_send_mail` each when the disk's flushes are
/// slow. `to`, `to_count` and `sender` apply to every message, as in
/// `mailspool_send_mail` (NULL/0: from each message's headers); delivery is deferred.
/// Each message is queued whole or not at all: `statuses[i]` is its status and, when
/// `ids` is not NULL, `ids[i]` its id (free each with `mailspool_free`) or NULL. Returns
/// `MAILSPOOL_OK` when every message was queued, else the first failure's status (its
/// message, with its index, is `mailspool_last_error()`).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // The C signature: parallel arrays, no structs to fill.
pub unsafe extern "C" fn mailspool_send_many(
    h: *const Handle,
    messages: *const *const u8,
    lengths: *const usize,
    count: usize,
    to: *const *const c_char,
    to_count: usize,
    sender: *const c_char,
    statuses: *mut i32,
    ids: *mut *mut c_char,
) -> i32 {
    status(|| {
        let h = handle(h)?;
        if count > 0 && (messages.is_null() || lengths.is_null() || statuses.is_null()) {
            return Err(Failure::invalid(
                "messages, lengths and statuses must not be NULL",
            ));
        }
        // SAFETY: the header's contract for `to` and `sender`.
        let recipients = unsafe { string_array(to, to_count) }?;
        let sender = unsafe { opt_str(sender, "sender") }?.map(str::to_owned);
        let mut mails = Vec::new();
        for i in 0..count {
            // SAFETY: `messages` and `lengths` hold `count` entries each.
            let (p, len) = unsafe { (*messages.add(i), *lengths.add(i)) };
            if p.is_null() && len > 0 {
                return Err(Failure::invalid(format!("messages[{i}] is NULL")));
            }
            let bytes: &[u8] = if len == 0 {
                &[]
            } else {
                // SAFETY: `len` readable bytes at `p`.
                unsafe { std::slice::from_raw_parts(p, len) }
            };
            let mut mail =
                SendMail::new(MessageSource::Bytes(bytes)).to(recipients.iter().cloned());
            mail.from = sender.clone();
            mails.push(mail);
        }
        let mut first_failure = None;
        for (i, r) in h.spool.send_many(mails).into_iter().enumerate() {
            let (code, id) = match r {
                Ok(sent) => (MAILSPOOL_OK, Some(sent.id)),
                Err(e) => {
                    let failure = Failure::from(e);
                    let code = failure.kind as i32;
                    first_failure.get_or_insert(Failure {
                        message: format!("message {i}: {}", failure.message),
                        ..failure
                    });
                    (code, None)
                }
            };
            // SAFETY: `statuses` (and `ids` when not NULL) hold `count` entries.
            unsafe { *statuses.add(i) = code };
            if !ids.is_null() {
                let out = unsafe { ids.add(i) };
                match id {
                    Some(id) => give_string(out, id),
                    None => unsafe { *out = std::ptr::null_mut() },
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    })
}

/// The queue as JSON: an array with one object per node (recipient): `id`, `node`, `to`,
/// `from`, `tier`, `queued_at`, `due_at` (Unix times), `size`, `held`, `last_error`.
/// `*json_out` is the caller's, freed with `mailspool_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mailspool_queue_json(h: *const Handle, json_out: *mut *mut c_char) -> i32 {
    status(|| {
        if json_out.is_null() {
            return Err(Failure::invalid("json_out is NULL"));
        }
        let entries = handle(h)?.spool.queue().map_err(|e| Failure {
            kind: mailspool::embed::spool_error_kind(&e),
            exit_code: mailspool::send::spool_exit_code(&e),
            message: e.to_string(),
        })?;
        let json = serde_json::to_string(&entries).map_err(|e| Failure {
            kind: ErrorKind::Internal,
            message: e.to_string(),
            exit_code: mailspool::sysexits::SOFTWARE,
        })?;
        give_string(json_out, json);
        Ok(())
    })
}

/// Free a string the library returned (NULL is ignored).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mailspool_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: the string came from CString::into_raw in this library.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// The message of the last failed call on this thread ("" after a success). Valid
/// until the thread's next call into the library.
#[unsafe(no_mangle)]
pub extern "C" fn mailspool_last_error() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().0.as_ptr())
}

/// The sendmail (sysexits.h) exit code of the last failed call on this thread: 75 means
/// try again later, 65 a bad message, and so on; 0 after a success.
#[unsafe(no_mangle)]
pub extern "C" fn mailspool_last_exit_code() -> i32 {
    LAST_ERROR.with(|l| l.borrow().1)
}

/// The name of a status code ("Ok", "SpoolFull", "BadAddress"...); "Unknown" for others.
#[unsafe(no_mangle)]
pub extern "C" fn mailspool_status_name(status: i32) -> *const c_char {
    static NAMES: std::sync::OnceLock<Vec<CString>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        let mut v = vec![CString::new("Ok").unwrap_or_default()];
        v.extend(
            ErrorKind::ALL
                .iter()
                .map(|k| CString::new(k.name()).unwrap_or_default()),
        );
        v.push(CString::new("Unknown").unwrap_or_default());
        v
    });
    let i = usize::try_from(status)
        .ok()
        .filter(|&i| i < names.len() - 1)
        .unwrap_or(names.len() - 1);
    names[i].as_ptr()
}

/// The library's version, e.g. "0.1.0".
#[unsafe(no_mangle)]
pub extern "C" fn mailspool_version() -> *const c_char {
    c"0.1.0".as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_kinds_in_order() {
        let codes = [
            MAILSPOOL_E_INVALID_ARGUMENT,
            MAILSPOOL_E_NO_RECIPIENTS,
            MAILSPOOL_E_BAD_ADDRESS,
            MAILSPOOL_E_MESSAGE_TOO_LARGE,
            MAILSPOOL_E_BAD_MESSAGE,
            MAILSPOOL_E_NO_INPUT,
            MAILSPOOL_E_INVALID_ID,
            MAILSPOOL_E_ID_IN_USE,
            MAILSPOOL_E_SPOOL_FULL,
            MAILSPOOL_E_SPOOL_UNAVAILABLE,
            MAILSPOOL_E_LOCKED,
            MAILSPOOL_E_NO_PERMISSION,
            MAILSPOOL_E_CONFIG,
            MAILSPOOL_E_IO,
            MAILSPOOL_E_NOT_DELIVERED,
            MAILSPOOL_E_INTERNAL,
        ];
        for (k, code) in ErrorKind::ALL.iter().zip(codes) {
            assert_eq!(*k as i32, code, "{k:?}");
        }
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i + 1, "{k:?}");
            let name = unsafe { CStr::from_ptr(mailspool_status_name(*k as i32)) };
            assert_eq!(name.to_str().unwrap(), k.name());
        }
        let unknown = unsafe { CStr::from_ptr(mailspool_status_name(99)) };
        assert_eq!(unknown.to_str().unwrap(), "Unknown");
        let version = unsafe { CStr::from_ptr(mailspool_version()) };
        assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
