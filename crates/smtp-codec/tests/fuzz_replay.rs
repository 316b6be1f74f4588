//! Fuzzing on stable: replays the cargo-fuzz corpus and regression files through
//! `posthorn_smtp_codec::fuzzing`, then runs a deterministic pseudo-random stress test
//! (xorshift, fixed seed) over the same functions, so fuzz-like coverage runs in CI without
//! nightly or libFuzzer.

use std::fs;
use std::path::Path;

use posthorn_smtp_codec::fuzzing;

/// A fuzz target: name of its corpus directory and the function libFuzzer calls.
type Target = (&'static str, fn(&[u8]));

const TARGETS: &[Target] = &[
    ("command", fuzzing::command),
    ("data_receiver", fuzzing::data_receiver),
];

fn replay_dir(dir: &Path, target: fn(&[u8])) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<_> = entries.map(|e| e.expect("dir entry").path()).collect();
    files.sort();
    for file in &files {
        let data = fs::read(file).expect("read corpus file");
        let result = std::panic::catch_unwind(|| target(&data));
        assert!(result.is_ok(), "fuzz input {} failed", file.display());
    }
    files.len()
}

#[test]
fn replay_corpus_and_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, target) in TARGETS {
        let corpus = replay_dir(&root.join("corpus").join(name), *target);
        assert!(
            corpus >= 10,
            "seed corpus for {name} has only {corpus} files"
        );
        replay_dir(&root.join("regressions").join(name), *target);
    }
}

/// xorshift64* — deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const COMMAND_TOKENS: &[&[u8]] = &[
    b"EHLO ",
    b"HELO ",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"DATA",
    b"BDAT ",
    b" LAST",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"HELP",
    b"VRFY ",
    b"EXPN ",
    b"STARTTLS",
    b"AUTH ",
    b"mail from:",
    b"<",
    b">",
    b"<>",
    b"@",
    b".",
    b",",
    b":",
    b"\"",
    b"\\",
    b" ",
    b"  ",
    b"a",
    b"Z9",
    b"example.com",
    b"Postmaster",
    b"[",
    b"]",
    b"IPv6:",
    b"::1",
    b"192.0.2.1",
    b"-",
    b"_",
    b"SIZE=",
    b"BODY=8BITMIME",
    b"BODY=BINARYMIME",
    b"SMTPUTF8",
    b"RET=HDRS",
    b"ENVID=",
    b"AUTH=<>",
    b"NOTIFY=",
    b"SUCCESS,FAILURE",
    b"NEVER",
    b"ORCPT=rfc822;",
    b"+2B",
    b"+",
    b"=",
    b"123",
    b"18446744073709551616",
    "é".as_bytes(),
    "δ".as_bytes(),
    b"\xff",
    b"\t",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
];

const DATA_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n.\r\n",
    b".",
    b"..",
    b"\r",
    b"\n",
    b"\n.\n",
    b"\r.\r",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\n.\r\n",
    b"a",
    b"hello world",
    b"MAIL FROM:<x@y>\r\n",
    b"\x00",
    b"\xc3\xa9",
];

fn generate(rng: &mut Rng, tokens: &[&[u8]], max_tokens: usize, out: &mut Vec<u8>) {
    let n = rng.below(max_tokens + 1);
    for _ in 0..n {
        if rng.below(16) == 0 {
            out.push(rng.next() as u8);
        } else {
            out.extend_from_slice(tokens[rng.below(tokens.len())]);
        }
    }
}

fn pick<'a>(rng: &mut Rng, items: &[&'a str]) -> &'a str {
    items[rng.below(items.len())]
}

/// A mostly well-formed command built from grammar pieces, sometimes mutated.
fn structured_command(rng: &mut Rng) -> Vec<u8> {
    const LOCAL: &[&str] = &[
        "a",
        "user.name",
        "\"john doe\"",
        "\"a\\\"b>c\"",
        "δοκιμή",
        "user%x",
        "a+b",
        "!#$~",
        "e=mc2",
    ];
    const HOST: &[&str] = &[
        "example.com",
        "[192.0.2.1]",
        "[IPv6:2001:db8::1]",
        "[IPv6:::ffff:1.2.3.4]",
        "[x-tag:abc]",
        "παράδειγμα.δοκιμή",
        "a-b.c",
        "my_host.example",
    ];
    const PARAM: &[&str] = &[
        "SIZE=123",
        "size=0",
        "BODY=8BITMIME",
        "BODY=7BIT",
        "BODY=binarymime",
        "SMTPUTF8",
        "RET=FULL",
        "RET=hdrs",
        "ENVID=a+2Bb",
        "ENVID=+C3+A9",
        "AUTH=<>",
        "AUTH=x+40y",
        "AUTH=+3C>",
        "NOTIFY=NEVER",
        "NOTIFY=success,delay",
        "ORCPT=rfc822;a+40b",
        "ORCPT=utf-8;a;b",
    ];
    let mut line = String::new();
    match rng.below(6) {
        0 | 1 => {
            line.push_str(pick(
                rng,
                &["MAIL FROM:", "mail from: ", "RCPT TO:", "rcpt to:"],
            ));
            let (local, host) = (pick(rng, LOCAL), pick(rng, HOST));
            match rng.below(6) {
                0 => line.push_str("<>"),
                1 => line.push_str(&format!("{local}@{host}")),
                2 => line.push_str(&format!("<@{}:{local}@{host}>", pick(rng, &["a.b", "x"]))),
                3 => line.push_str("<Postmaster>"),
                _ => line.push_str(&format!("<{local}@{host}>")),
            }
            for _ in 0..rng.below(4) {
                line.push_str(pick(rng, &[" ", "  "]));
                line.push_str(pick(rng, PARAM));
            }
        }
        2 => line.push_str(&format!(
            "{}{}",
            pick(rng, &["EHLO ", "HELO "]),
            pick(rng, HOST)
        )),
        3 => line.push_str(&format!(
            "AUTH {}{}",
            pick(rng, &["PLAIN", "login", "CRAM-MD5", "X_Y"]),
            pick(rng, &["", " =", " dGVzdA==", " a/b+c"])
        )),
        4 => line.push_str(&format!(
            "BDAT {}{}",
            rng.next() % 100_000,
            pick(rng, &["", " LAST", " last"])
        )),
        _ => line.push_str(&format!(
            "{} {}",
            pick(rng, &["VRFY", "EXPN", "HELP", "NOOP"]),
            pick(rng, LOCAL)
        )),
    }
    let mut bytes = line.into_bytes();
    if rng.below(3) == 0 && !bytes.is_empty() {
        let at = rng.below(bytes.len() + 1);
        let tok = COMMAND_TOKENS[rng.below(COMMAND_TOKENS.len())];
        bytes.splice(at..at, tok.iter().copied());
    }
    bytes
}

#[test]
fn deterministic_stress() {
    const ITERATIONS: usize = 20_000;
    let mut rng = Rng(0x5eed_0f90_5740_41aa);
    let mut parsed = 0;
    let mut completed = 0;
    for i in 0..ITERATIONS {
        let mut input = Vec::new();
        if i % 2 == 0 {
            if i % 4 == 0 {
                input = structured_command(&mut rng);
            } else {
                generate(&mut rng, COMMAND_TOKENS, 12, &mut input);
            }
            // Bias towards well-formed prefixes so the deeper parser paths get exercised.
            if i % 4 == 2 && rng.below(2) == 0 {
                let verb: &[u8] = [&b"MAIL FROM:<"[..], b"RCPT TO:<", b"EHLO "][rng.below(3)];
                input.splice(0..0, verb.iter().copied());
            }
            if posthorn_smtp_codec::parse_command(&input).is_ok() {
                parsed += 1;
            }
            fuzzing::command(&input);
        } else {
            input.push(rng.next() as u8);
            input.push(rng.next() as u8);
            generate(&mut rng, DATA_TOKENS, 24, &mut input);
            if rng.below(2) == 0 {
                input.extend_from_slice(b"\r\n.\r\n");
            }
            let mut r = posthorn_smtp_codec::DataReceiver::new(u64::MAX);
            if r.push(&input[2..]).1 == Some(posthorn_smtp_codec::DataEnd::Complete) {
                completed += 1;
            }
            fuzzing::data_receiver(&input);
        }
    }
    eprintln!("stress: {parsed} commands parsed, {completed} messages completed");
    // Guard against a generator that only ever produces garbage.
    assert!(parsed > ITERATIONS / 8, "only {parsed} commands parsed");
    assert!(
        completed > ITERATIONS / 20,
        "only {completed} messages completed"
    );
}
