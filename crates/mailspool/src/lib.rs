//! The `mailspool` program's package. The program is `src/main.rs` and `src/cli/`; this
//! library only re-exports the parts it is built from, under one name, for the
//! program and its integration tests: the embeddable library (`mailspool-core`: what
//! the bindings link, with no HTTP server and no command line) and the HTTP server
//! (`mailspool-http`, as `http`). Programs that embed mailspool depend on
//! `mailspool-core` instead.

pub use mailspool_core::*;
pub use mailspool_http as http;
