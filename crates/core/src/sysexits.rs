//! Exit codes from sysexits.h, which sendmail-compatible programs are expected to use.

/// Success.
pub const OK: u8 = 0;
/// Command line usage error.
pub const USAGE: u8 = 64;
/// Data format error (a malformed address or message).
pub const DATAERR: u8 = 65;
/// Cannot open input.
pub const NOINPUT: u8 = 66;
/// Service unavailable.
pub const UNAVAILABLE: u8 = 69;
/// Operating system error.
pub const OSERR: u8 = 71;
/// Internal software error.
pub const SOFTWARE: u8 = 70;
/// Cannot create (user) output file.
pub const CANTCREAT: u8 = 73;
/// Input/output error.
pub const IOERR: u8 = 74;
/// Temporary failure; the user is invited to retry.
pub const TEMPFAIL: u8 = 75;
/// Permission denied.
pub const NOPERM: u8 = 77;
/// Configuration error.
pub const CONFIG: u8 = 78;
