//! The cargo-fuzz targets' inputs on stable Rust: every seed in
//! `fuzz/corpus/{pop3,imap}/` and ~1,000 deterministic pseudo-random
//! mutations per protocol (xorshift; the same inputs on every run) go through
//! [`posthorn_access::fuzzing`], i.e. a whole POP3/IMAP session over an
//! in-memory stream against the embedded backends. No session may panic or
//! hang. A failing input is written to `CARGO_TARGET_TMPDIR` so it can be
//! added to the corpus or replayed with `cargo fuzz run <target> <file>`.
//!
//! `POSTHORN_FUZZ_MUTATIONS=n` changes the number of mutations per protocol,
//! `POSTHORN_FUZZ_SEED=n` the pseudo-random sequence (for longer bug hunts;
//! the default run is the same every time), `POSTHORN_FUZZ_REPLAY` runs one
//! saved input (see [`replay_one`]).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use imap_codec::decode::Decoder;
use imap_codec::{GreetingCodec, ResponseCodec};
use posthorn_access::fuzzing::{self, Outcome, Protocol};

/// Mutated inputs per protocol.
const MUTATIONS: usize = 1000;
/// Mutated sessions run at once (POP3 waits 300 ms after a failed login;
/// the CPU work per session is small).
const THREADS: usize = 12;

/// The tests share one store (the harness is per process): they run one
/// at a time so that seed transcripts are deterministic.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{}: only {} seeds",
        dir.display(),
        files.len()
    );
    files
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes and tokens that matter to the POP3/IMAP grammars.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\x00",
    b"\xff",
    b"\"",
    b"\\",
    b"*",
    b"%",
    b"(",
    b")",
    b"[",
    b"]",
    b"<0.4>",
    b"{0}\r\n",
    b"{5}\r\n",
    b"{5+}\r\n",
    b"{4294967295}\r\n",
    b"{18446744073709551616}\r\n",
    b"~{3}\r\n",
    b"1:*",
    b"*:4294967295",
    b"0",
    b"4294967296",
    b" NIL",
    b"BODY[1.2.HEADER.FIELDS (A B)]",
    b"&AMQ-",
    b"&-",
    b"&Jjo!",
    b"\r\nDONE\r\n",
    b"\r\nA IDLE\r\n",
    b"\r\n* \r\n",
    b"+ ",
    b"=",
    b"AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==",
];

/// A mutation of one seed: 1 to 4 edits, sometimes spliced with another seed.
fn mutate(rng: &mut XorShift, seeds: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].1.clone();
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        let at = rng.below(len + 1);
        match rng.below(9) {
            // Flip a bit.
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            // Replace a byte.
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = rng.next() as u8;
            }
            // Insert a grammar token.
            2 | 3 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                d.splice(at..at, t.iter().copied());
            }
            // Delete a range.
            4 if len > 0 => {
                let end = (at + 1 + rng.below(16)).min(len);
                d.drain(at.min(len - 1)..end);
            }
            // Duplicate a range (repeated commands, long lines).
            5 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let piece: Vec<u8> = d[start..end].to_vec();
                for _ in 0..1 + rng.below(4) {
                    d.splice(at..at, piece.iter().copied());
                }
            }
            // Splice: this seed's head, another's tail.
            6 => {
                let other = &seeds[rng.below(seeds.len())].1;
                let from = rng.below(other.len() + 1);
                d.truncate(at);
                d.extend_from_slice(&other[from..]);
            }
            // Truncate.
            7 => d.truncate(at),
            // Random bytes.
            _ => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at..at, bytes);
            }
        }
    }
    d
}

fn save_failure(target: &str, name: &str, data: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{target}-{name}"));
    std::fs::write(&p, data).unwrap();
    p
}

/// Run every input on `threads` threads; panic listing failing inputs.
/// `seeds`: the inputs are the corpus (transcripts are checked).
fn run_all(
    proto: Protocol,
    target: &str,
    inputs: Vec<(String, Vec<u8>)>,
    seeds: bool,
    threads: usize,
) {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let total_out = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((name, data)) = inputs.get(i) else {
                        return;
                    };
                    if seeds {
                        // Each seed starts from the same store, whatever ran before.
                        fuzzing::reset_store();
                    }
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        fuzzing::session(proto, data)
                    }));
                    let problem = match r {
                        Ok(Outcome {
                            timed_out: true, ..
                        }) => Some("hung (did not end after the input was closed)".to_string()),
                        Ok(o) if o.output.is_empty() => {
                            Some("no output (not even a greeting)".to_string())
                        }
                        Ok(o) => {
                            total_out.fetch_add(o.output.len(), Ordering::Relaxed);
                            if let Some(p) = server_error(&o.output) {
                                Some(p.to_string())
                            } else if let Some(p) = (proto == Protocol::Imap)
                                .then(|| imap_syntax_error(&o.output))
                                .flatten()
                            {
                                Some(p)
                            } else if seeds {
                                if let Ok(dir) = std::env::var("POSTHORN_FUZZ_TRANSCRIPTS") {
                                    let p = Path::new(&dir).join(format!("{target}-{name}"));
                                    std::fs::write(p, &o.output).unwrap();
                                }
                                check_seed(target, name, &o.output).map(String::from)
                            } else {
                                None
                            }
                        }
                        Err(_) => Some("panicked".to_string()),
                    };
                    if let Some(p) = problem {
                        let path = save_failure(target, name, data);
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{name}: {p} (input: {})", path.display()));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    eprintln!(
        "{target}: {} inputs in {:.1} s, {} bytes of output",
        inputs.len(),
        started.elapsed().as_secs_f64(),
        total_out.load(Ordering::Relaxed)
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Answers that mean the server failed, not the client: no input may cause
/// them on a healthy store.
fn server_error(out: &[u8]) -> Option<&'static str> {
    if contains(out, "[SERVERBUG]") {
        Some("IMAP answered [SERVERBUG]")
    } else if contains(out, "[UNAVAILABLE]")
        // The login throttle (two failures per session's Ctx) is expected.
        && out
            .split(|&c| c == b'\n')
            .any(|l| contains(l, "[UNAVAILABLE]") && !contains(l, "Too many failed logins"))
    {
        Some("IMAP answered [UNAVAILABLE]")
    } else if contains(out, "-ERR [SYS/") {
        Some("POP3 answered [SYS/...]")
    } else {
        None
    }
}

/// The server's whole output must parse as an IMAP greeting and responses
/// (imap-codec's response grammar; the server encodes with the same crate,
/// except for a few lines it writes itself). `ESEARCH` and `CHILDINFO`
/// lines are skipped: imap-codec has no grammar for them.
fn imap_syntax_error(out: &[u8]) -> Option<String> {
    let show = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(300)]).to_string();
    let mut rest = match GreetingCodec::default().decode(out) {
        Ok((rest, _)) => rest,
        Err(e) => return Some(format!("greeting does not parse ({e:?}): {:?}", show(out))),
    };
    while !rest.is_empty() {
        match ResponseCodec::default().decode(rest) {
            Ok((r, _)) => {
                let one = &rest[..rest.len() - r.len()];
                // After STARTTLS's tagged OK the bytes are TLS records.
                if !one.starts_with(b"* ") && one.ends_with(b" OK Begin TLS negotiation now\r\n") {
                    return None;
                }
                rest = r;
            }
            Err(e) => {
                let end = rest
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(rest.len(), |p| p + 1);
                // imap-codec has no response grammar for ESEARCH (RFC 4731)
                // nor for LIST-EXTENDED's CHILDINFO (RFC 5258).
                let line = &rest[..end];
                if rest.starts_with(b"* ESEARCH ")
                    || (rest.starts_with(b"* LIST ") && contains(line, "(\"CHILDINFO\" ("))
                {
                    rest = &rest[end..];
                    continue;
                }
                if rest.starts_with(b"* ID (") || rest.starts_with(b"* NAMESPACE (") {
                    rest = &rest[end..];
                    continue;
                }
                return Some(format!("response does not parse ({e:?}): {:?}", show(rest)));
            }
        }
    }
    None
}

/// Seeds that never log in (on purpose).
const NO_LOGIN: &[&str] = &[
    "empty",
    "errors-until-close",
    "garbage",
    "long-line",
    "not-authenticated-errors",
    "sasl-cancel",
    "starttls",
    "stls",
    "stls-pipelined-injection",
    "unknown-user",
];

/// What a seed's transcript must show (so a seed that no longer reaches
/// the state it was written for is noticed).
fn check_seed(target: &str, name: &str, out: &[u8]) -> Option<&'static str> {
    let logged_in = match target {
        "pop3" => "+OK Logged in",
        _ => " OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ENABLE",
    };
    if !NO_LOGIN.contains(&name) && !contains(out, logged_in) {
        return Some("the seed did not log in");
    }
    let want: &[&str] = match (target, name) {
        ("pop3", "rfc1939-session") => &["+OK Message 1 deleted", "signing off"],
        ("pop3", "capa-uidl-top") => &["SASL PLAIN", "\r\n.\r\n"],
        ("pop3", "pipelined-delete-all") => &["+OK Message 3 deleted"],
        ("pop3", "wrong-then-right") => &["-ERR [AUTH] Invalid credentials"],
        ("pop3", "errors-until-close") => &["Too many errors"],
        ("pop3", "long-line") => &["Line too long"],
        ("pop3", "stls" | "stls-pipelined-injection") => &["+OK Begin TLS"],
        ("imap", "starttls") => &["b OK Begin TLS"],
        ("imap", "literal-limits") => &["l2 NO [TOOBIG]", "* BYE"],
        ("imap", "idle") => &["i3 OK IDLE terminated", "i4 BAD"],
        ("imap", "mailbox-management") => &["b4 OK RENAME", "b14 OK DELETE"],
        ("imap", "append-literal-plus") => &["t2 OK [APPENDUID", "t3 OK [APPENDUID"],
        ("imap", "copy-move-expunge") => &["c3 OK [COPYUID", "c9 OK MOVE"],
        ("imap", "search") => &["s4 OK", "* SEARCH 1"],
        ("imap", "fetch-sections") => &["BODYSTRUCTURE ((\"TEXT\"", "f14 OK"],
        ("imap", "rfc3501-example") => &["a010 OK LOGOUT"],
        ("imap", "rfc7162-rfc9051-extensions") => &[
            "* ENABLED QRESYNC IMAP4rev2",
            "x6 OK [MODIFIED",
            "* ESEARCH (TAG \"x7\") MIN 1",
            "BINARY.SIZE[1] ",
            "x9 OK LIST",
            "x12 OK STATUS",
            "x16 BAD",
        ],
        _ => &[],
    };
    want.iter()
        .any(|w| !contains(out, w))
        .then_some("the transcript lacks what the seed was written for")
}

fn mutations(target: &str, seed: u64) -> Vec<(String, Vec<u8>)> {
    let seeds = corpus(target);
    let n = std::env::var("POSTHORN_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MUTATIONS);
    let seed = std::env::var("POSTHORN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(seed, |v| seed ^ v.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut rng = XorShift(seed);
    (0..n)
        .map(|i| (format!("mutation-{i:04}"), mutate(&mut rng, &seeds)))
        .collect()
}

#[test]
fn pop3_corpus() {
    let _serial = serial();
    run_all(Protocol::Pop3, "pop3", corpus("pop3"), true, 1);
}

#[test]
fn imap_corpus() {
    let _serial = serial();
    run_all(Protocol::Imap, "imap", corpus("imap"), true, 1);
}

#[test]
fn pop3_mutations() {
    let _serial = serial();
    run_all(
        Protocol::Pop3,
        "pop3",
        mutations("pop3", 0x5eed_0000_0000_0001),
        false,
        THREADS,
    );
}

#[test]
fn imap_mutations() {
    let _serial = serial();
    run_all(
        Protocol::Imap,
        "imap",
        mutations("imap", 0x5eed_0000_0000_0002),
        false,
        THREADS,
    );
}

/// The two entry points the fuzz targets call do not panic on trivial input.
#[test]
fn entry_points() {
    let _serial = serial();
    fuzzing::pop3_session(b"");
    fuzzing::imap_session(b"");
    fuzzing::pop3_session(b"QUIT\r\n");
    fuzzing::imap_session(b"a LOGOUT\r\n");
}

/// The IMAP output check accepts the server's lines and rejects junk.
#[test]
fn imap_syntax_check() {
    let ok = b"* OK [CAPABILITY IMAP4rev1] ready\r\n* ID (\"name\" \"Posthorn\")\r\n\
* 1 FETCH (BODY[] {3}\r\nabc)\r\n+ \r\na OK done\r\n* BYE bye\r\n";
    assert_eq!(imap_syntax_error(ok), None);
    for bad in [
        &b"+OK POP3\r\n"[..],
        b"* OK ready\r\n* 1 FETCH (BODY[] {5}\r\nabc)\r\n",
        b"* OK ready\r\na OK\r\n",
        b"* OK ready\r\n* FOO bar\r\n",
    ] {
        assert!(
            imap_syntax_error(bad).is_some(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// `POSTHORN_FUZZ_REPLAY=imap:<file>` (or `pop3:<file>`): run that one input
/// and print the server's output (for investigating a saved failure; does
/// nothing without the variable).
#[test]
fn replay_one() {
    let Ok(spec) = std::env::var("POSTHORN_FUZZ_REPLAY") else {
        return;
    };
    let _serial = serial();
    let (proto, path) = match spec.split_once(':') {
        Some(("pop3", p)) => (Protocol::Pop3, p),
        Some(("imap", p)) => (Protocol::Imap, p),
        _ => panic!("POSTHORN_FUZZ_REPLAY=imap:<file> or pop3:<file>"),
    };
    let data = std::fs::read(path).unwrap();
    let started = Instant::now();
    let o = fuzzing::session(proto, &data);
    eprintln!(
        "--- input ({} bytes)\n{}\n--- output ({} bytes, {:?}, timed out: {})\n{}",
        data.len(),
        String::from_utf8_lossy(&data),
        o.output.len(),
        started.elapsed(),
        o.timed_out,
        String::from_utf8_lossy(&o.output)
    );
}
