//! A minimal session driver shared by the RFC vector tests: it plays the server side of the
//! codec (line framing, command parsing, switching to DATA / BDAT and back) over a client
//! byte stream, fed in chunks of a given size, and records what the codec reported.

#![allow(dead_code)] // each test binary uses a different subset

use posthorn_smtp_codec::{
    BdatEnd, BdatReceiver, DataEnd, DataReceiver, LineError, LineReader, ParseError, Request,
    parse_command,
};

/// Chunk sizes every vector is re-fed with (docs/testing.md, "Codec vectors are fed in every chunk size").
pub const CHUNK_SIZES: &[usize] = &[1, 2, 3, 4, 5, 7, 8, 13, 16, 32, 64, 128, 256, 512, 4096];

/// What the codec reported to the server, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A command line was parsed (or failed to parse).
    Command(Result<Request, ParseError>),
    /// The line framer rejected a line.
    Line(LineError),
    /// A DATA transfer ended.
    Data(Vec<u8>, DataEnd),
    /// A BDAT chunk ended (message bytes only on `MessageComplete`).
    Bdat(Vec<u8>, BdatEnd),
    /// Bytes pipelined after STARTTLS were discarded (server policy, CVE-2011-0411).
    DiscardedAfterStartTls(Vec<u8>),
}

enum Mode {
    Command,
    Data(DataReceiver),
    Bdat,
}

/// Runs `stream` through the codec in chunks of `chunk` bytes.
/// Returns the events and the bytes still buffered at the end.
pub fn drive(stream: &[u8], chunk: usize, max_size: u64) -> (Vec<Event>, Vec<u8>) {
    let mut events = Vec::new();
    let mut lines = LineReader::new(512);
    let mut bdat = BdatReceiver::new(max_size);
    let mut mode = Mode::Command;
    for piece in stream.chunks(chunk.max(1)) {
        let mut input = piece.to_vec();
        loop {
            match &mut mode {
                Mode::Command => {
                    lines.push(&input);
                    input.clear();
                    let mut switched = false;
                    while let Some(line) = lines.next_line() {
                        let line = match line {
                            Ok(line) => line,
                            Err(e) => {
                                events.push(Event::Line(e));
                                continue;
                            }
                        };
                        let req = parse_command(&line);
                        events.push(Event::Command(req.clone()));
                        match req {
                            Ok(Request::Data) => {
                                mode = Mode::Data(DataReceiver::new(max_size));
                                input = lines.take_buffered();
                                switched = true;
                                break;
                            }
                            Ok(Request::Bdat { size, last }) => {
                                bdat.begin_chunk(size, last).expect("chunk sequence");
                                mode = Mode::Bdat;
                                input = lines.take_buffered();
                                switched = true;
                                break;
                            }
                            Ok(Request::StartTls) => {
                                // The codec leaves pipelined plaintext in the reader; the
                                // server must throw it away before the handshake.
                                let junk = lines.take_buffered();
                                if !junk.is_empty() {
                                    events.push(Event::DiscardedAfterStartTls(junk));
                                }
                            }
                            _ => {}
                        }
                    }
                    if !switched {
                        break;
                    }
                }
                Mode::Data(receiver) => {
                    let (used, end) = receiver.push(&input);
                    match end {
                        Some(end) => {
                            events.push(Event::Data(receiver.take_message(), end));
                            input.drain(..used);
                            mode = Mode::Command;
                        }
                        None => {
                            assert_eq!(used, input.len());
                            break;
                        }
                    }
                }
                Mode::Bdat => {
                    let (used, end) = bdat.push(&input);
                    match end {
                        Some(end) => {
                            let msg = if end == BdatEnd::MessageComplete {
                                bdat.take_message()
                            } else {
                                Vec::new()
                            };
                            if bdat.is_complete() {
                                bdat.reset();
                            }
                            events.push(Event::Bdat(msg, end));
                            input.drain(..used);
                            mode = Mode::Command;
                        }
                        None => {
                            assert_eq!(used, input.len());
                            break;
                        }
                    }
                }
            }
        }
    }
    (events, lines.buffered().to_vec())
}

/// Drives `stream` with every chunk size and asserts all runs agree; returns the result.
pub fn drive_all(stream: &[u8], max_size: u64) -> (Vec<Event>, Vec<u8>) {
    let reference = drive(stream, stream.len().max(1), max_size);
    for &chunk in CHUNK_SIZES {
        assert_eq!(
            drive(stream, chunk, max_size),
            reference,
            "chunk size {chunk} disagrees for {:?}",
            String::from_utf8_lossy(stream)
        );
    }
    reference
}

/// Shorthand for a successfully parsed command event.
pub fn cmd(line: &str) -> Event {
    Event::Command(Ok(parse_command(line.as_bytes()).expect(line)))
}
