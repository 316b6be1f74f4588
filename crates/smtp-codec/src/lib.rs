//! # posthorn-smtp-codec
//!
//! A sans-I/O codec for the **server side** of SMTP (RFC 5321) as used by the smtp-ingress
//! tier. It never reads a socket, never spawns, never allocates more than its limits allow:
//! the service feeds it bytes and writes the bytes it returns.
//!
//! | piece | what it does |
//! |---|---|
//! | [`LineReader`] | frames command lines, enforces the line limit, exposes pipelined bytes |
//! | [`parse_command`] → [`Request`] | parses one command line; [`ParseError::reply`] picks the reply |
//! | [`Reply`] | encodes (multi-line) replies with enhanced status codes |
//! | [`DataReceiver`] | `DATA` content: dot-unstuffing, end-of-data, size limit, bare CR/LF check |
//! | [`BdatReceiver`] | `BDAT` chunks (RFC 3030): exact octet counts, size limit |
//!
//! Supported extensions: SIZE (RFC 1870), 8BITMIME (RFC 6152), CHUNKING / BINARYMIME
//! (RFC 3030), DSN (RFC 3461: `RET`, `ENVID`, `NOTIFY`, `ORCPT`, with xtext decoding),
//! AUTH (RFC 4954: the command and the `AUTH=` parameter), STARTTLS (RFC 3207) and
//! SMTPUTF8 (RFC 6531: UTF-8 local parts and domains are always *parsed*; whether they are
//! *allowed* depends on whether the client sent `SMTPUTF8`, which the server checks with
//! [`Mailbox::is_ascii`]).
//!
//! ## Policies
//!
//! These are deliberate choices; each is covered by tests.
//!
//! * **Bare LF ends a command line.** RFC 5321 §2.3.8 requires CRLF, but like Postfix the
//!   [`LineReader`] also accepts a lone LF after a *command*. A command is never stored or
//!   relayed, so this cannot be used for smuggling. A bare CR does not end a command line.
//! * **Bare CR or bare LF in `DATA` content is rejected.** The message only ends at the exact
//!   octets `CR LF . CR LF` (RFC 5321 §4.1.1.4); `LF . LF`, `CR . CR`, `LF . CR LF`,
//!   `CR LF . LF` and `CR LF . CR` never end it, so a client cannot hide a second SMTP
//!   transaction inside a message that a more lenient next hop would split ("SMTP smuggling",
//!   CVE-2023-51764/51765/51766). A message containing any bare CR or LF is consumed up to
//!   its real end, nothing is stored, and [`DataEnd::BareLineEnding`] asks the server to
//!   answer **`554 5.6.0 Message contains bare CR or LF; lines must end with CRLF`**.
//!   (Postfix's `smtpd_forbid_bare_newline` answers `521 5.5.2` and disconnects; we keep the
//!   session. X.6.0 is used because no dedicated enhanced code is registered.)
//! * **Long body lines are accepted.** RFC 5321 §4.5.3.1.6 limits text lines to 1000 octets,
//!   but real mail violates it and Postfix accepts it; only the total message size is limited
//!   ([`DataEnd::TooBig`] → `552 5.3.4`). Command lines *are* limited
//!   ([`LineReader::DEFAULT_MAX_LINE_LEN`], `500 5.5.2 Line too long`).
//! * **Lenient envelope syntax, like Postfix with `strict_rfc821_envelopes = no`:** SP after
//!   `FROM:` / `TO:` is allowed, `<>` may be omitted around a mailbox ([`Path::bracketed`]
//!   says so), HELO accepts an address literal, HELO/EHLO domains may contain `_`.
//! * **Strict mailbox syntax otherwise:** local parts are RFC 5321 Dot-string or
//!   Quoted-string (so `a..b@x`, `.a@x` and `user@elsewhere.test@example.test` are
//!   `501 5.1.3` / `501 5.1.7`), domains are LDH labels or U-labels of at most 63 octets.
//! * **Source routes are dropped** (RFC 5321 §4.1.1.3 and Appendix C: SHOULD ignore), but
//!   [`Path::had_source_route`] tells the server they were there.
//! * **Pipelined bytes after STARTTLS** are left in the [`LineReader`]; the server must drop
//!   them with [`LineReader::take_buffered`] (CVE-2011-0411).
//! * **Unknown `MAIL` / `RCPT` parameters** are errors ([`ParseError::UnrecognizedParameter`]
//!   → `555 5.5.4`); a known keyword with a bad value is `501 5.5.4`.
//!
//! ## Example
//!
//! ```
//! use posthorn_smtp_codec::{parse_command, DataEnd, DataReceiver, LineReader, Request};
//!
//! let mut lines = LineReader::default();
//! lines.push(b"MAIL FROM:<a@example.org> SIZE=12\r\nDATA\r\nHi\r\n.\r\nQUIT\r\n");
//! let mail = parse_command(&lines.next_line().unwrap().unwrap()).unwrap();
//! assert!(matches!(mail, Request::Mail { .. }));
//! let data = parse_command(&lines.next_line().unwrap().unwrap()).unwrap();
//! assert_eq!(data, Request::Data);
//!
//! // After replying 354, hand the buffered bytes to the data receiver.
//! let mut body = DataReceiver::new(10 * 1024 * 1024);
//! let pending = lines.take_buffered();
//! let (used, end) = body.push(&pending);
//! assert_eq!(end, Some(DataEnd::Complete));
//! assert_eq!(body.take_message(), b"Hi\r\n");
//! // Whatever follows the end of data is the next command.
//! lines.push(&pending[used..]);
//! assert_eq!(parse_command(&lines.next_line().unwrap().unwrap()), Ok(Request::Quit));
//! ```
#![warn(missing_docs)]

mod data;
mod error;
pub mod fuzzing;
mod line;
mod reply;
mod request;
pub mod xtext;

pub use data::{BdatEnd, BdatError, BdatReceiver, DataEnd, DataReceiver, dot_stuff};
pub use error::{LineError, ParseError};
pub use line::LineReader;
pub use reply::{EnhancedCode, Reply, ReplyError, parse_reply};
pub use request::{
    AuthParam, Body, ForwardPath, Host, MailParams, Mailbox, Notify, Orcpt, Path, RcptParams,
    Request, Ret, ReversePath, parse_command,
};
