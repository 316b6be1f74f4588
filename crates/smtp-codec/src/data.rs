//! Message content: `DATA` (RFC 5321 §4.1.1.4, §4.5.2) and `BDAT` (RFC 3030).

use crate::reply::Reply;

/// How a `DATA` transfer ended. Returned by [`DataReceiver::push`] once the real end-of-data
/// sequence `CRLF . CRLF` has been consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataEnd {
    /// The message is complete and within limits; get it with [`DataReceiver::take_message`].
    Complete,
    /// The message exceeded the size limit. Nothing is stored; reply `552 5.3.4`
    /// (RFC 5321 §4.5.3.1.9, RFC 1870 §6).
    TooBig,
    /// The message contained a bare CR or bare LF. Nothing is stored; reply `554 5.6.0`
    /// (see the crate docs for why this is rejected).
    BareLineEnding,
}

impl DataEnd {
    /// The reply for a failed transfer, or `None` for [`DataEnd::Complete`] (the server's
    /// `250` depends on what it did with the message).
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Self::Complete => None,
            Self::TooBig => Some(Reply::new(
                552,
                Some((5, 3, 4)),
                "Message size exceeds fixed maximum message size",
            )),
            Self::BareLineEnding => Some(Reply::new(
                554,
                Some((5, 6, 0)),
                "Message contains bare CR or LF; lines must end with CRLF",
            )),
        }
    }
}

/// Where the receiver is relative to line structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Just after CRLF (or at the very start of the data).
    LineStart,
    /// Inside a line; the previous byte was not CR.
    Text,
    /// The previous byte was a CR (already stored).
    Cr,
    /// At line start we saw `.`; it is held back.
    Dot,
    /// At line start we saw `.` CR; both are held back.
    DotCr,
    /// `CRLF . CRLF` has been consumed.
    Done(DataEnd),
}

/// Receives the message after the server's `354` reply, removes dot-stuffing and finds the
/// end of data.
///
/// ```abnf
/// ; RFC 5321 §4.1.1.4, §4.5.2 — the content ends with
/// end-of-data = CRLF "." CRLF      ; the data start counts as preceded by CRLF
/// ; a line starting with "." has that "." removed (transparency)
/// ```
///
/// Only the exact octets CR LF `.` CR LF end the data. A bare LF or a bare CR never takes
/// part in an end-of-data match, so `\n.\n`, `\r.\r`, `\n.\r\n`, `\r\n.\n` and `\r\n.\r`
/// followed by anything do not end the message (SMTP smuggling; see the crate docs). Such
/// messages are consumed to their real end and then rejected with
/// [`DataEnd::BareLineEnding`].
///
/// The stored message is the un-stuffed content *including* the CRLF that precedes the final
/// `.`, i.e. every line ends with CRLF exactly as received; an empty message (`.\r\n` as
/// first line) is empty. Body lines longer than RFC 5321's 1000 octets are accepted.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    state: State,
    message: Vec<u8>,
    max_size: u64,
    /// Set on the first violation; once set, nothing more is stored.
    failure: Option<DataEnd>,
    received: u64,
}

impl DataReceiver {
    /// A receiver for one message of at most `max_size` octets (un-stuffed, CRLFs included).
    pub fn new(max_size: u64) -> Self {
        Self {
            state: State::LineStart,
            message: Vec::new(),
            max_size,
            failure: None,
            received: 0,
        }
    }

    /// Consumes bytes up to and including the end-of-data sequence.
    ///
    /// Returns how many bytes of `input` were consumed and, once the end was reached, how the
    /// transfer ended. Bytes after the end are **not** consumed: they are pipelined commands
    /// and belong back in the [`LineReader`](crate::LineReader). After the end, further calls
    /// consume nothing and return the same `DataEnd` again.
    pub fn push(&mut self, input: &[u8]) -> (usize, Option<DataEnd>) {
        if let State::Done(end) = self.state {
            return (0, Some(end));
        }
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Text => {
                    // Fast path: copy everything up to the next CR or LF.
                    let rest = &input[i..];
                    let n = rest
                        .iter()
                        .position(|&b| b == b'\r' || b == b'\n')
                        .unwrap_or(rest.len());
                    self.store(&rest[..n]);
                    i += n;
                    if let Some(&b) = input.get(i) {
                        self.step(b);
                        i += 1;
                    }
                }
                State::Done(_) => break,
                _ => {
                    self.step(input[i]);
                    i += 1;
                }
            }
        }
        self.received += i as u64;
        match self.state {
            State::Done(end) => (i, Some(end)),
            _ => (i, None),
        }
    }

    /// One byte of the state machine.
    fn step(&mut self, b: u8) {
        self.state = match (self.state, b) {
            (State::LineStart, b'.') => State::Dot,
            (State::LineStart | State::Text, b'\r') => {
                self.store(b"\r");
                State::Cr
            }
            (State::LineStart | State::Text, b'\n') => self.bare(b"\n", State::Text),
            (State::LineStart | State::Text, b) => {
                self.store(&[b]);
                State::Text
            }
            (State::Cr, b'\n') => {
                self.store(b"\n");
                State::LineStart
            }
            // The stored CR was bare.
            (State::Cr, b'\r') => self.bare(b"\r", State::Cr),
            (State::Cr, b) => self.bare(&[b], State::Text),
            // ".." at line start: the first dot is transparency, keep the second.
            (State::Dot, b'\r') => State::DotCr,
            (State::Dot, b'.') => {
                self.store(b".");
                State::Text
            }
            // "." plus other characters: the dot is removed (RFC 5321 §4.5.2).
            (State::Dot, b'\n') => self.bare(b"\n", State::Text),
            (State::Dot, b) => {
                self.store(&[b]);
                State::Text
            }
            (State::DotCr, b'\n') => State::Done(self.failure.unwrap_or(DataEnd::Complete)),
            // "." CR x: the dot is removed, the CR was bare; re-run x after that CR.
            (State::DotCr, b) => {
                self.bare(b"\r", State::Cr);
                self.state = State::Cr;
                return self.step(b);
            }
            (State::Done(end), _) => State::Done(end),
        };
    }

    /// Records a bare CR/LF violation, stores `bytes` (for nothing, as storing has stopped),
    /// and returns `next`.
    fn bare(&mut self, bytes: &[u8], next: State) -> State {
        self.fail(DataEnd::BareLineEnding);
        self.store(bytes);
        next
    }

    fn fail(&mut self, why: DataEnd) {
        if self.failure.is_none() {
            self.failure = Some(why);
            self.message = Vec::new();
        }
    }

    fn store(&mut self, bytes: &[u8]) {
        if self.failure.is_some() || bytes.is_empty() {
            return;
        }
        if self.message.len() as u64 + bytes.len() as u64 > self.max_size {
            self.fail(DataEnd::TooBig);
            return;
        }
        self.message.extend_from_slice(bytes);
    }

    /// `true` once the end-of-data sequence was consumed.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// Raw octets consumed so far (before un-stuffing), for logging and quotas.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes the message stored so far. After [`DataEnd::Complete`] this is the whole
    /// message; after a failure it is empty.
    pub fn take_message(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.message)
    }
}

/// Applies dot-stuffing (RFC 5321 §4.5.2) and appends the end-of-data sequence: the inverse
/// of [`DataReceiver`]. `message` should use CRLF line endings; if it does not end with CRLF,
/// one is added before the final `.`.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    for (i, &b) in message.iter().enumerate() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n' && i > 0 && message[i - 1] == b'\r';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// How a `BDAT` chunk ended. Returned by [`BdatReceiver::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BdatEnd {
    /// A non-`LAST` chunk was fully received: reply `250` and wait for the next `BDAT`.
    ChunkComplete,
    /// The `LAST` chunk was received; get the message with [`BdatReceiver::take_message`].
    MessageComplete,
    /// The message exceeded the size limit. The whole chunk was still consumed, as
    /// RFC 3030 §2 requires; reply `552 5.3.4`. Later chunks of this message also end with
    /// `TooBig`.
    TooBig,
}

impl BdatEnd {
    /// The `552 5.3.4` reply for [`BdatEnd::TooBig`], `None` otherwise.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Self::TooBig => DataEnd::TooBig.reply(),
            Self::ChunkComplete | Self::MessageComplete => None,
        }
    }
}

/// Why [`BdatReceiver::begin_chunk`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BdatError {
    /// The previous chunk has not been fully received.
    #[error("previous BDAT chunk still in progress")]
    ChunkInProgress,
    /// The `LAST` chunk was already received; call [`BdatReceiver::reset`] first.
    #[error("message already complete")]
    MessageComplete,
}

/// Receives `BDAT` chunks (RFC 3030 §2): exactly the declared number of octets per chunk,
/// binary-safe, no dot-unstuffing and no line-ending checks (the octet count, not the
/// content, delimits a chunk, so there is nothing to smuggle).
///
/// ```abnf
/// ; RFC 3030 §2
/// bdat-cmd   = "BDAT" SP chunk-size [ SP end-marker ] CR LF
/// chunk-size = 1*DIGIT
/// end-marker = "LAST"
/// ```
#[derive(Debug, Clone)]
pub struct BdatReceiver {
    message: Vec<u8>,
    max_size: u64,
    /// Octets declared by all chunks so far (for the size limit).
    total: u64,
    /// Octets still expected in the current chunk.
    remaining: u64,
    /// A chunk is in progress (possibly of size 0, not yet reported).
    in_chunk: bool,
    last: bool,
    complete: bool,
    too_big: bool,
}

impl BdatReceiver {
    /// A receiver for one message of at most `max_size` octets across all chunks.
    pub fn new(max_size: u64) -> Self {
        Self {
            message: Vec::new(),
            max_size,
            total: 0,
            remaining: 0,
            in_chunk: false,
            last: false,
            complete: false,
            too_big: false,
        }
    }

    /// Starts a chunk announced by `BDAT size [LAST]`. The declared size is not trusted for
    /// allocation: memory grows only as octets arrive, and not beyond `max_size`.
    pub fn begin_chunk(&mut self, size: u64, last: bool) -> Result<(), BdatError> {
        if self.in_chunk {
            return Err(BdatError::ChunkInProgress);
        }
        if self.complete {
            return Err(BdatError::MessageComplete);
        }
        self.total = self.total.saturating_add(size);
        if self.total > self.max_size && !self.too_big {
            self.too_big = true;
            self.message = Vec::new();
        }
        self.remaining = size;
        self.last = last;
        self.in_chunk = true;
        Ok(())
    }

    /// Consumes up to the rest of the current chunk from `input`. Returns the number of bytes
    /// consumed and, when the chunk is complete, how it ended. Bytes after the chunk are not
    /// consumed (they are the next command). Without a chunk in progress, consumes nothing.
    pub fn push(&mut self, input: &[u8]) -> (usize, Option<BdatEnd>) {
        if !self.in_chunk {
            return (0, None);
        }
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(input.len());
        if !self.too_big {
            self.message.extend_from_slice(&input[..n]);
        }
        self.remaining -= n as u64;
        if self.remaining > 0 {
            return (n, None);
        }
        self.in_chunk = false;
        if self.last {
            self.complete = true;
        }
        let end = if self.too_big {
            BdatEnd::TooBig
        } else if self.last {
            BdatEnd::MessageComplete
        } else {
            BdatEnd::ChunkComplete
        };
        (n, Some(end))
    }

    /// Octets still expected in the current chunk.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// `true` once the `LAST` chunk has been fully consumed.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Takes the message received so far (empty after `TooBig`).
    pub fn take_message(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.message)
    }

    /// Forgets everything (after `RSET` or a completed transaction).
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (Vec<u8>, usize, Option<DataEnd>) {
        let mut r = DataReceiver::new(1 << 20);
        let (n, end) = r.push(input);
        (r.take_message(), n, end)
    }

    /// (wire input, stored message, consumed, end)
    type DataCase = (&'static [u8], &'static [u8], usize, Option<DataEnd>);

    #[test]
    fn data_table() {
        use DataEnd::*;
        let table: &[DataCase] = &[
            (b".\r\n", b"", 3, Some(Complete)),
            (b"a\r\n.\r\n", b"a\r\n", 6, Some(Complete)),
            (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", 6, Some(Complete)),
            (b"..\r\n.\r\n", b".\r\n", 7, Some(Complete)),
            (b"..a\r\n.\r\n", b".a\r\n", 8, Some(Complete)),
            (b".a\r\n.\r\n", b"a\r\n", 7, Some(Complete)),
            (b"a.\r\n.\r\n", b"a.\r\n", 7, Some(Complete)),
            (b"\r\n.\r\n", b"\r\n", 5, Some(Complete)),
            (b"a\r\n", b"a\r\n", 3, None),
            (b"a\r\n.\r", b"a\r\n", 5, None),
            (b"a\n.\n", b"", 4, None),
            (b"a\n.\n.\r\n", b"", 7, None),
            (b"a\n.\n\r\n.\r\n", b"", 9, Some(BareLineEnding)),
            (b"a\r.\r\r\n.\r\n", b"", 9, Some(BareLineEnding)),
            (b"a\r\n.\nb\r\n.\r\n", b"", 11, Some(BareLineEnding)),
            (b"a\r\n.\rb\r\n.\r\n", b"", 11, Some(BareLineEnding)),
            (b"a\n.\r\n", b"", 5, None),
        ];
        for (input, msg, used, end) in table {
            let got = run(input);
            assert_eq!(
                (got.0.as_slice(), got.1, got.2),
                (*msg, *used, *end),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn size_limit_counts_unstuffed_bytes() {
        let mut r = DataReceiver::new(5);
        assert_eq!(r.push(b"..ab\r\n.\r\n"), (9, Some(DataEnd::Complete)));
        assert_eq!(r.take_message(), b".ab\r\n");
        let mut r = DataReceiver::new(4);
        assert_eq!(r.push(b"..ab\r\n.\r\n"), (9, Some(DataEnd::TooBig)));
        assert_eq!(r.take_message(), b"");
        assert_eq!(r.push(b"more"), (0, Some(DataEnd::TooBig)));
    }

    #[test]
    fn first_failure_wins() {
        let mut r = DataReceiver::new(2);
        assert_eq!(r.push(b"abc\n\r\n.\r\n").1, Some(DataEnd::TooBig));
        let mut r = DataReceiver::new(2);
        assert_eq!(r.push(b"\nabc\r\n.\r\n").1, Some(DataEnd::BareLineEnding));
    }

    #[test]
    fn dot_stuff_round_trip() {
        for msg in [
            &b""[..],
            b"a\r\n",
            b".\r\n",
            b"..\r\n.a\r\n",
            b"x\r\n.\r\ny\r\n",
        ] {
            let wire = dot_stuff(msg);
            let (got, used, end) = run(&wire);
            assert_eq!(
                (got.as_slice(), used, end),
                (msg, wire.len(), Some(DataEnd::Complete))
            );
        }
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
    }

    #[test]
    fn bdat_chunks() {
        let mut r = BdatReceiver::new(10);
        r.begin_chunk(3, false).unwrap();
        assert_eq!(r.begin_chunk(1, false), Err(BdatError::ChunkInProgress));
        assert_eq!(r.push(b"ab"), (2, None));
        assert_eq!(r.push(b"c\r\nBDAT"), (1, Some(BdatEnd::ChunkComplete)));
        assert_eq!(r.push(b"xyz"), (0, None));
        r.begin_chunk(0, true).unwrap();
        assert_eq!(r.push(b""), (0, Some(BdatEnd::MessageComplete)));
        assert_eq!(r.begin_chunk(1, true), Err(BdatError::MessageComplete));
        assert_eq!(r.take_message(), b"abc");
    }

    #[test]
    fn bdat_too_big_still_consumes_chunk() {
        let mut r = BdatReceiver::new(4);
        r.begin_chunk(3, false).unwrap();
        assert_eq!(r.push(b"abc"), (3, Some(BdatEnd::ChunkComplete)));
        r.begin_chunk(3, true).unwrap();
        assert_eq!(r.push(b"def\r\nQUIT"), (3, Some(BdatEnd::TooBig)));
        assert!(r.is_complete());
        assert!(r.take_message().is_empty());
        r.reset();
        r.begin_chunk(u64::MAX, false).unwrap();
        assert_eq!(r.push(b"abc"), (3, None));
        assert_eq!(r.remaining(), u64::MAX - 3);
    }
}
