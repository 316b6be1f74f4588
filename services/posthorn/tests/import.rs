//! `posthorn alias import` and `posthorn virtual import` against a running
//! embedded system.

mod common;

use std::path::Path;

use common::*;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn aliases(sys: &System) -> Vec<String> {
    sys.admin_ok(&["alias", "list"])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn alias_import_refuses_unsupported_targets_then_imports_and_delivers() {
    let sys = System::start(Backend::Embedded, "");
    sys.standard_directory();
    sys.admin_ok(&["alias", "remove", "team@example.test"]);
    let before = aliases(&sys);

    // `:include:` and `|prog`: exit 65, both lines named, nothing imported.
    let bad = write(
        sys.dir.path(),
        "bad-aliases",
        "good: alice\nlist: :include:/etc/mail/list\nprog: \"|/usr/bin/vacation alice\"\n",
    );
    let o = admin(&sys.router_url(), &["alias", "import", &bad]);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(65), "{}", out(&o));
    assert!(
        stderr.contains(&format!("{bad}:2:")) && stderr.contains("`:include:` is not supported"),
        "{}",
        out(&o)
    );
    assert!(
        stderr.contains(&format!("{bad}:3:"))
            && stderr.contains("program delivery is not supported"),
        "{}",
        out(&o)
    );
    assert_eq!(aliases(&sys), before, "nothing may be imported");

    let file = write(
        sys.dir.path(),
        "aliases",
        "# Posthorn test aliases\r\n\
         postmaster: alice\n\
         \n\
         team: alice,\n\
         \tbob\n\
         # a comment between entries\n\
         sales: bob, \"carol@elsewhere.test\",\n\
         root: bob\n\
         root: alice\n",
    );

    // --dry-run prints the plan without contacting the server (none here).
    let o = admin(
        "http://127.0.0.1:9",
        &["alias", "import", &file, "--dry-run"],
    );
    assert!(o.status.success(), "{}", out(&o));
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        stdout.contains("team@<first local domain>: alice, bob")
            && stdout.contains("would import 4 aliases"),
        "{}",
        out(&o)
    );
    assert_eq!(aliases(&sys), before);

    let o = admin(&sys.router_url(), &["alias", "import", &file]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("imported 4 aliases"),
        "{}",
        out(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("{file}:9:")),
        "duplicate warning expected: {}",
        out(&o)
    );
    let list = aliases(&sys);
    for want in [
        "postmaster@example.test: alice",
        "team@example.test: alice, bob",
        "sales@example.test: bob, carol@elsewhere.test",
        "root@example.test: alice",
    ] {
        assert!(list.iter().any(|l| l == want), "{want} in {list:?}");
    }

    // End to end: mail to the imported alias reaches both members.
    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    c.cmd("EHLO x");
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    let r = c.cmd("RCPT TO:<team@example.test>");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: t\r\n\r\nx\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    sys.wait_messages("alice@example.test", 1, WAIT);
    sys.wait_messages("bob@example.test", 1, WAIT);
}

#[test]
fn virtual_import_and_domain_checks() {
    let sys = System::start(Backend::Embedded, "");

    // No local domain yet: the alias name's domain cannot be chosen.
    let file = write(sys.dir.path(), "aliases", "team: alice\n");
    let o = admin(&sys.router_url(), &["alias", "import", &file]);
    assert_eq!(o.status.code(), Some(65), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no local domains"),
        "{}",
        out(&o)
    );

    sys.standard_directory();
    sys.admin_ok(&["domain", "add", "other.test"]);

    // --domain must be a local domain; nothing is sent otherwise.
    let o = admin(
        &sys.router_url(),
        &["alias", "import", &file, "--domain", "nowhere.test"],
    );
    assert_eq!(o.status.code(), Some(65), "{}", out(&o));
    let o = admin(
        &sys.router_url(),
        &["alias", "import", &file, "--domain", "other.test"],
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        aliases(&sys).iter().any(|l| l == "team@other.test: alice"),
        "{:?}",
        aliases(&sys)
    );

    // error: entries and keys outside the local domains: 65, nothing imported.
    let before = aliases(&sys);
    let bad = write(
        sys.dir.path(),
        "bad-virtusertable",
        "info@example.test alice\nspam@example.test error:nouser No such user\n",
    );
    let o = admin(&sys.router_url(), &["virtual", "import", &bad]);
    assert_eq!(o.status.code(), Some(65), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("{bad}:2:")),
        "{}",
        out(&o)
    );
    let remote = write(
        sys.dir.path(),
        "remote-virtusertable",
        "info@example.test alice\ninfo@remote.test bob\n",
    );
    let o = admin(&sys.router_url(), &["virtual", "import", &remote]);
    assert_eq!(o.status.code(), Some(65), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("remote.test is not a local domain"),
        "{}",
        out(&o)
    );
    assert_eq!(aliases(&sys), before, "nothing may be imported");

    let table = write(
        sys.dir.path(),
        "virtusertable",
        "# virtual users\n\
         info@example.test\talice@example.test\r\n\
         sales@other.test  bob@example.test\n\
         \n\
         help@other.test alice\n",
    );
    let o = admin(&sys.router_url(), &["virtual", "import", &table]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("imported 3 aliases"),
        "{}",
        out(&o)
    );
    let list = aliases(&sys);
    for want in [
        "info@example.test: alice@example.test",
        "sales@other.test: bob@example.test",
        "help@other.test: alice",
    ] {
        assert!(list.iter().any(|l| l == want), "{want} in {list:?}");
    }
}

/// A catch-all `%1@domain` entry becomes the catch-all target `@domain`.
#[test]
fn virtual_import_catch_all() {
    let sys = System::start(Backend::Embedded, "");
    sys.standard_directory();
    sys.admin_ok(&["domain", "add", "other.test"]);
    let before = aliases(&sys);
    let table = write(
        sys.dir.path(),
        "virtusertable",
        "info@example.test alice@example.test\n@other.test %1@example.test\n",
    );
    let o = admin(&sys.router_url(), &["virtual", "import", &table]);
    if !o.status.success() {
        // A refusal midway must leave the directory as it was.
        assert_eq!(aliases(&sys), before, "rolled back: {}", out(&o));
    }
    assert!(o.status.success(), "{}", out(&o));
    let list = aliases(&sys);
    for want in [
        "info@example.test: alice@example.test",
        "@other.test: @example.test",
    ] {
        assert!(list.iter().any(|l| l == want), "{want} in {list:?}");
    }
}
