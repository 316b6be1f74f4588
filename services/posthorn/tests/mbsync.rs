//! mbsync (isync) against the real `posthorn` binary, on both backend sets:
//! a full two-way sync of 500 messages into a Maildir, then changes on both
//! sides (server: flags, expunge, UID MOVE through Python imaplib; local:
//! a `S` flag, a new message, a trashed message, a new folder) and
//! incremental syncs after which both sides must agree.
//!
//! mbsync is a strict client (it checks UIDVALIDITY, UIDPLUS answers,
//! FETCH syntax and untagged responses), so any protocol slip makes it
//! fail; its `-V` output is included in the failure message.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const ALICE: &str = "alice@example.test";
const N: usize = 500;

/// Deliver `n` messages to alice over one SMTP connection, each
/// transaction's MAIL/RCPT/DATA pipelined.
fn deliver(sys: &System, n: usize) {
    let (mut smtp, greeting) = Smtp::connect(sys.ports.smtp);
    assert!(greeting.starts_with("220"), "{greeting}");
    let r = smtp.cmd("EHLO client.example.org");
    assert!(r.starts_with("250") && r.contains("PIPELINING"), "{r}");
    for i in 1..=n {
        smtp.send(
            format!("MAIL FROM:<sender@example.org>\r\nRCPT TO:<{ALICE}>\r\nDATA\r\n").as_bytes(),
        );
        for want in ["250", "250", "354"] {
            let r = smtp.reply();
            assert!(r.starts_with(want), "message {i}: want {want}, got {r}");
        }
        let r = smtp.cmd(&format!(
            "From: Sender <sender@example.org>\r\nTo: {ALICE}\r\nSubject: message {i}\r\n\
             Message-ID: <m{i}@example.org>\r\n\r\nbody of message {i}\r\n."
        ));
        assert!(r.starts_with("250"), "message {i}: {r}");
    }
    let r = smtp.cmd("QUIT");
    assert!(r.starts_with("221"), "{r}");
}

fn write_config(sys: &System, maildir: &Path) -> PathBuf {
    let cert = sys.dir.path().join("data").join("tls").join("cert.pem");
    assert!(
        cert.exists(),
        "no generated certificate at {}",
        cert.display()
    );
    std::fs::create_dir_all(maildir).unwrap();
    let cfg = format!(
        "IMAPAccount posthorn
Host 127.0.0.1
Port {port}
User {ALICE}
Pass alice-pw
SSLType STARTTLS
CertificateFile {cert}
Timeout 60

IMAPStore remote
Account posthorn

MaildirStore local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
",
        port = sys.ports.imap,
        cert = cert.display(),
        maildir = maildir.display(),
    );
    let path = sys.dir.path().join("mbsyncrc");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// Run `mbsync -V -c cfg sync`; panic with its output and the server logs
/// unless it succeeds.
fn mbsync(sys: &System, cfg: &Path) -> String {
    let o = Command::new("mbsync")
        .arg("-V")
        .arg("-c")
        .arg(cfg)
        .arg("sync")
        .env("HOME", sys.dir.path())
        .output()
        .expect("run mbsync (Debian package isync)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "mbsync failed ({:?}):\n{text}\n{}",
        o.status.code(),
        sys.logs()
    );
    // mbsync reports protocol oddities it tolerates as warnings.
    let lower = text.to_lowercase();
    assert!(
        !lower.contains("warning") && !lower.contains("error"),
        "mbsync complained:\n{text}"
    );
    text
}

/// (file name, maildir info flags) of every message in a Maildir folder.
fn maildir(folder: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        let Ok(rd) = std::fs::read_dir(folder.join(sub)) else {
            continue;
        };
        for e in rd {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let flags = name
                .rsplit_once(":2,")
                .map(|(_, f)| f.to_string())
                .unwrap_or_default();
            out.push((format!("{sub}/{name}"), flags));
        }
    }
    out
}

/// The far-side UID mbsync put into a file name (`,U=<uid>`).
fn uid_of(name: &str) -> Option<u32> {
    let rest = name.split(",U=").nth(1)?;
    rest.split([':', ',']).next()?.parse().ok()
}

fn find_uid(folder: &Path, uid: u32) -> (String, String) {
    maildir(folder)
        .into_iter()
        .find(|(n, _)| uid_of(n) == Some(uid))
        .unwrap_or_else(|| panic!("no file for UID {uid} in {}", folder.display()))
}

const IMAP_PRELUDE: &str = r#"
import imaplib, re, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
M = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=30)
M.starttls(ctx)
typ, _ = M.login("alice@example.test", "alice-pw")
assert typ == "OK"
def ok(r):
    typ, data = r
    assert typ == "OK", r
    return data
def count(box):
    data = ok(M.status(box, "(MESSAGES)"))
    return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))
"#;

/// Server-side changes: 10 flagged, 20 deleted + expunged, 5 moved to Trash.
const SERVER_CHANGES: &str = r#"
assert ok(M.select("INBOX")) == [b"500"]
ok(M.uid("STORE", "1:10", "+FLAGS.SILENT", "(\\Flagged)"))
ok(M.uid("STORE", "101:120", "+FLAGS.SILENT", "(\\Deleted)"))
gone = ok(M.expunge())
assert len(gone) == 20, gone
data = ok(M.uid("FETCH", "201:205", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
moved = sorted(int(re.search(rb"Subject: message (\d+)", d[1]).group(1)) for d in data if isinstance(d, tuple))
assert len(moved) == 5, data
ok(M.uid("MOVE", "201:205", "Trash"))
assert count("INBOX") == 475, count("INBOX")
M.logout()
print("moved", " ".join(map(str, moved)))
"#;

/// Prints the flags of UID argv[2] in INBOX, the INBOX count and the Trash count.
const SERVER_STATE: &str = r#"
ok(M.select("INBOX", readonly=True))
data = ok(M.uid("FETCH", sys.argv[2], "(FLAGS)"))
print(data[0].decode())
print("inbox", count("INBOX"))
print("trash", count("Trash"))
data = ok(M.uid("SEARCH", "SUBJECT", "\"locally written\""))
print("local-new", data[0].decode())
data = ok(M.list())
print("list", b" ".join(data).decode())
M.logout()
"#;

fn mbsync_two_way(backend: Backend) {
    let sys = System::start(backend, "");
    sys.standard_directory();
    deliver(&sys, N);
    sys.wait_messages(ALICE, N, WAIT);
    let mail = sys.dir.path().join("mail");
    let cfg = write_config(&sys, &mail);
    let inbox = mail.join("INBOX");
    let trash = mail.join("Trash");

    // 1. Full sync.
    let log = mbsync(&sys, &cfg);
    let files = maildir(&inbox);
    assert_eq!(files.len(), N, "first sync:\n{log}");
    let mut uids: Vec<u32> = files.iter().filter_map(|(n, _)| uid_of(n)).collect();
    uids.sort();
    assert_eq!(uids, (1..=N as u32).collect::<Vec<_>>());
    for special in ["Drafts", "Sent", "Junk", "Trash"] {
        assert!(mail.join(special).join("cur").is_dir(), "{special}:\n{log}");
    }
    // A message arrives intact.
    let (name, _) = find_uid(&inbox, 42);
    let bytes = std::fs::read(inbox.join(&name)).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("\r\n\r\nbody of message ") || text.contains("\n\nbody of message "));

    // 2. Changes on both sides, then an incremental sync.
    let imap = sys.ports.imap.to_string();
    let out = python(&format!("{IMAP_PRELUDE}{SERVER_CHANGES}"), &[&imap]);
    // Delivery is asynchronous: UIDs need not follow the SMTP order, so
    // the script says which messages (by subject number) it moved.
    let moved: Vec<u32> = out
        .trim()
        .strip_prefix("moved ")
        .unwrap_or_else(|| panic!("{out}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let (name, flags) = find_uid(&inbox, 300);
    assert_eq!(flags, "", "{name}");
    let base = name.rsplit_once('/').unwrap().1;
    std::fs::rename(
        inbox.join(&name),
        inbox.join("cur").join(format!("{base}S")),
    )
    .unwrap();

    let log = mbsync(&sys, &cfg);
    let files = maildir(&inbox);
    assert_eq!(files.len(), N - 20 - 5, "second sync:\n{log}");
    for uid in 1..=10 {
        let (name, flags) = find_uid(&inbox, uid);
        assert!(flags.contains('F'), "UID {uid} not flagged: {name}");
    }
    let flagged = files.iter().filter(|(_, f)| f.contains('F')).count();
    assert_eq!(flagged, 10);
    for uid in (101..=120).chain(201..=205) {
        assert!(
            !files.iter().any(|(n, _)| uid_of(n) == Some(uid)),
            "UID {uid} still in the local INBOX"
        );
    }
    let trashed = maildir(&trash);
    assert_eq!(trashed.len(), 5, "Trash: {trashed:?}\n{log}");
    let mut in_trash = Vec::new();
    for (name, _) in &trashed {
        let text = std::fs::read_to_string(trash.join(name)).unwrap();
        let i: u32 = text
            .split("Subject: message ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        in_trash.push(i);
    }
    in_trash.sort();
    assert_eq!(in_trash, moved);
    let state = python(&format!("{IMAP_PRELUDE}{SERVER_STATE}"), &[&imap, "300"]);
    let first = state.lines().next().unwrap();
    assert!(
        first.contains("UID 300") && first.contains("\\Seen"),
        "{state}"
    );
    assert!(state.contains("inbox 475\n"), "{state}");
    assert!(state.contains("trash 5\n"), "{state}");

    // 3. Local-only changes: a new message, a trashed one, a new folder.
    let new_path = inbox.join("new").join("1700000000.local1.host");
    std::fs::write(
        &new_path,
        "From: alice@example.test\nSubject: locally written\n\nhello from the maildir\n",
    )
    .unwrap();
    let (name, _) = find_uid(&inbox, 400);
    let base = name.rsplit_once('/').unwrap().1.to_string();
    // UID 400 has no flags yet, so the info is empty and "T" alone is sorted.
    assert!(base.ends_with(":2,"), "{base}");
    std::fs::rename(
        inbox.join(&name),
        inbox.join("cur").join(format!("{base}T")),
    )
    .unwrap();
    let archive = mail.join("Archive");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(archive.join(sub)).unwrap();
    }
    std::fs::write(
        archive.join("new").join("1700000001.local2.host"),
        "From: alice@example.test\nSubject: archived\n\nkeep me\n",
    )
    .unwrap();

    let log = mbsync(&sys, &cfg);
    let files = maildir(&inbox);
    assert_eq!(files.len(), N - 25, "third sync:\n{log}");
    assert!(
        !files.iter().any(|(n, _)| uid_of(n) == Some(400)),
        "UID 400 not expunged locally:\n{log}"
    );
    // The new local message got a server UID (APPENDUID) in its name.
    let appended: Vec<u32> = files
        .iter()
        .filter(|(n, _)| n.contains("local1"))
        .filter_map(|(n, _)| uid_of(n))
        .collect();
    assert_eq!(appended.len(), 1, "{files:?}\n{log}");
    assert!(appended[0] > N as u32, "{appended:?}");
    let state = python(
        &format!("{IMAP_PRELUDE}{SERVER_STATE}"),
        &[&imap, &appended[0].to_string()],
    );
    assert!(state.contains("inbox 475\n"), "{state}");
    assert!(
        state.contains(&format!("local-new {}", appended[0])),
        "{state}"
    );
    assert!(state.contains("Archive"), "{state}");
    assert_eq!(sys.messages(ALICE).len(), 475);

    // 4. Nothing changed: a fourth sync is a no-op on both sides.
    let before: Vec<String> = {
        let mut v: Vec<String> = maildir(&inbox).into_iter().map(|(n, _)| n).collect();
        v.sort();
        v
    };
    let log = mbsync(&sys, &cfg);
    let mut after: Vec<String> = maildir(&inbox).into_iter().map(|(n, _)| n).collect();
    after.sort();
    assert_eq!(before, after, "{log}");
    assert_eq!(maildir(&archive).len(), 1);
}

macro_rules! both {
    ($($name:ident),*) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::Backend::Embedded) } )*
        }
        mod cluster {
            $( #[test] fn $name() { super::$name(super::Backend::Cluster) } )*
        }
    };
}

both!(mbsync_two_way);
