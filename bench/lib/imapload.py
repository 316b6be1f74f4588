#!/usr/bin/env python3
"""IMAP/POP3 load generator for bench/imap.sh (Python standard library only).

Every subcommand prints one JSON object on stdout. Accounts are given as
"user:password" strings; all connections go to 127.0.0.1.

  imapload.py fill PORT ACCOUNT COUNT [--seed-offset K] [--depth D] [--connections K]
      APPEND COUNT messages (see message()) to the account's INBOX over K
      connections [1] in parallel, each pipelined D deep with LITERAL+
      (non-synchronizing literals).
  imapload.py fill-many PORT COUNT ACCOUNT... [--parallel P]
      fill for several accounts, P accounts at a time.
  imapload.py pop3 PORT ACCOUNT... [--rounds R]
      one client per account, all in parallel; each does R sessions of
      USER, PASS, LIST, RETR 1..n (one at a time), QUIT (no DELE).
  imapload.py fetch PORT ACCOUNT WHAT
      LOGIN, EXAMINE INBOX, then one command timed from sending it to its
      tagged OK: WHAT=full -> UID FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[]),
      WHAT=headers -> FETCH 1:* (FLAGS ENVELOPE).
  imapload.py mixed PORT SECONDS ACCOUNT... [--persistent] [--seed S]
      one client per account, all in parallel, for SECONDS: the command mix of
      imaptest's default profile (see mixed_round()). Without --persistent a
      round is LOGIN ... LOGOUT on a new connection, like imaptest; with it,
      each client logs in once and repeats the rest of the round.
  imapload.py idle PORT N ACCOUNT... [--login-concurrency C] [--warmup W]
                   [--pids PID...] [--hold S] [--settle S]
      W warm-up sessions (LOGIN, SELECT INBOX, LOGOUT), then memory "before",
      then N connections (round-robin over the accounts) that LOGIN, SELECT
      INBOX and IDLE, at most C logins in flight; then memory "after" (after
      SETTLE s), then the server's CPU over HOLD s with all N idling.
      Memory is RSS and PSS summed over the process trees rooted at --pids
      (from /proc/PID/smaps_rollup; needs root for other users' processes).
      --cap-mib M stops opening connections once the anonymous RSS of those
      processes grew by more than M MiB (the connections already open stay
      and are measured).
  imapload.py report RESULTS.jsonl
      markdown tables (medians) from the JSON lines of the runs.

Every subcommand also takes --pids PID... (server process trees: their CPU
over the run, "other load" on the machine, memory at the end) and
--label KEY=VALUE (copied into the output).
"""

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time

HOST = "127.0.0.1"
LIMIT = 4 << 20  # StreamReader buffer limit (largest line/message we read at once)


# ---------------------------------------------------------------- messages

def message(user, i):
    """Deterministic test message i for user: 4-6 KB (5 KB on average),
    plain text, CRLF line ends. Both servers get exactly these bytes."""
    size = 4096 + (i * 617) % 2048
    head = (
        f"Return-Path: <sender{i % 97}@example.org>\r\n"
        f"From: Sender {i % 97} <sender{i % 97}@example.org>\r\n"
        f"To: {user}\r\n"
        f"Subject: Benchmark message {i} for {user}\r\n"
        f"Date: Wed, 26 Nov 2025 {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d} +0000\r\n"
        f"Message-ID: <bench-{i}.{user}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode()
    line = (f"Line of message {i}: " + "the quick brown fox jumps over the lazy dog " * 2)[:70] + "\r\n"
    body = bytearray()
    lb = line.encode()
    while len(head) + len(body) + len(lb) <= size:
        body += lb
    body += b"x" * (size - len(head) - len(body) - 2) + b"\r\n"
    return head + bytes(body)


# ---------------------------------------------------------------- IMAP client

class ImapError(Exception):
    pass


class Imap:
    def __init__(self):
        self.r = self.w = None
        self.n = 0
        self.caps = ""

    async def connect(self, port):
        self.r, self.w = await asyncio.open_connection(HOST, port, limit=LIMIT)
        greet = await self.r.readline()
        if not greet.startswith(b"* OK"):
            raise ImapError(f"greeting: {greet[:200]!r}")
        return self

    def tag(self):
        self.n += 1
        return f"a{self.n}"

    async def read_response(self, tag, sink=None):
        """Read until the tagged response of `tag`. Untagged lines (with their
        literals) go to sink(line_bytes, literal_sizes) if given. Returns
        (status, tagged_line, literal_bytes, untagged_count)."""
        tb = tag.encode() + b" "
        lit_bytes = 0
        untagged = 0
        r = self.r
        while True:
            line = await r.readuntil(b"\r\n")
            if line.startswith(tb):
                st = line[len(tb):].split(b" ", 1)[0].decode()
                return st, line, lit_bytes, untagged
            # An untagged response, possibly with literals ({n}\r\n at the end).
            full = line
            while line.endswith(b"}\r\n") and b"{" in line:
                n = int(line[line.rindex(b"{") + 1:-3].rstrip(b"+"))
                if sink is None:
                    await r.readexactly(n)
                else:
                    full += await r.readexactly(n)
                lit_bytes += n
                line = await r.readuntil(b"\r\n")
                if sink is not None:
                    full += line
            if line.startswith(b"+"):
                # A continuation request we did not expect (no LITERAL+?).
                raise ImapError(f"unexpected continuation: {line[:200]!r}")
            untagged += 1
            if sink is not None:
                sink(full)

    async def cmd(self, text, sink=None, literal=None):
        """Send one command (with one optional non-synchronizing literal at
        the end) and wait for its tagged response."""
        t = self.tag()
        if literal is None:
            self.w.write(f"{t} {text}\r\n".encode())
        else:
            self.w.write(f"{t} {text} {{{len(literal)}+}}\r\n".encode() + literal + b"\r\n")
        st, line, lb, un = await self.read_response(t, sink)
        return st, line

    async def login(self, user, pw):
        st, line = await self.cmd(f'LOGIN "{user}" "{pw}"')
        if st != "OK":
            raise ImapError(f"LOGIN {user}: {line[:200]!r}")

    async def close(self):
        try:
            self.w.close()
            await self.w.wait_closed()
        except Exception:
            pass


def split(acct):
    u, p = acct.split(":", 1)
    return u, p


def rusage_self():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------- fill

async def fill_one(port, acct, count, offset=0, depth=64):
    user, pw = split(acct)
    c = await Imap().connect(port)
    await c.login(user, pw)
    sent = 0
    done = 0
    pending = []
    errors = 0
    while done < count:
        while sent < count and len(pending) < depth:
            msg = message(user, offset + sent)
            t = c.tag()
            c.w.write(f"{t} APPEND INBOX {{{len(msg)}+}}\r\n".encode() + msg + b"\r\n")
            pending.append(t)
            sent += 1
        await c.w.drain()
        t = pending.pop(0)
        st, line, _, _ = await c.read_response(t)
        if st != "OK":
            errors += 1
            if errors < 5:
                print(f"APPEND {user}: {line[:200]!r}", file=sys.stderr)
        done += 1
    await c.cmd("LOGOUT")
    await c.close()
    return errors


async def fill_many(port, count, accts, parallel, offset=0, depth=64):
    sem = asyncio.Semaphore(parallel)
    t0 = time.monotonic()

    async def one(a):
        async with sem:
            return await fill_one(port, a, count, offset, depth)

    errs = await asyncio.gather(*(one(a) for a in accts))
    wall = time.monotonic() - t0
    return {"accounts": len(accts), "per_account": count, "appended": count * len(accts) - sum(errs),
            "errors": sum(errs), "wall_s": round(wall, 3),
            "msgs_per_s": round(count * len(accts) / wall, 1)}


# ---------------------------------------------------------------- POP3

class Pop3:
    async def connect(self, port):
        self.r, self.w = await asyncio.open_connection(HOST, port, limit=LIMIT)
        g = await self.r.readline()
        if not g.startswith(b"+OK"):
            raise ImapError(f"POP3 greeting {g[:200]!r}")
        return self

    async def single(self, line):
        self.w.write(line.encode() + b"\r\n")
        resp = await self.r.readuntil(b"\r\n")
        if not resp.startswith(b"+OK"):
            raise ImapError(f"POP3 {line.split()[0]}: {resp[:200]!r}")
        return resp

    async def multi(self, line):
        self.w.write(line.encode() + b"\r\n")
        first = await self.r.readuntil(b"\r\n")
        if not first.startswith(b"+OK"):
            raise ImapError(f"POP3 {line.split()[0]}: {first[:200]!r}")
        data = await self.r.readuntil(b"\r\n.\r\n") if True else b""
        return first, data


async def pop3_session(port, acct):
    user, pw = split(acct)
    c = await Pop3().connect(port)
    await c.single(f"USER {user}")
    await c.single(f"PASS {pw}")
    # LIST: "+OK ...\r\n" then lines; the terminator may directly follow +OK.
    c.w.write(b"LIST\r\n")
    first = await c.r.readuntil(b"\r\n")
    if not first.startswith(b"+OK"):
        raise ImapError(f"LIST: {first[:200]!r}")
    sizes = []
    while True:
        l = await c.r.readuntil(b"\r\n")
        if l == b".\r\n":
            break
        n, s = l.split()
        sizes.append(int(s))
    nbytes = 0
    for i in range(1, len(sizes) + 1):
        c.w.write(f"RETR {i}\r\n".encode())
        first = await c.r.readuntil(b"\r\n")
        if not first.startswith(b"+OK"):
            raise ImapError(f"RETR {i}: {first[:200]!r}")
        data = await c.r.readuntil(b"\r\n.\r\n")
        nbytes += len(data)
    await c.single("QUIT")
    c.w.close()
    return len(sizes), nbytes


async def pop3_run(port, accts, rounds):
    t0 = time.monotonic()
    cpu0 = rusage_self()
    errors = []

    async def client(a):
        msgs = byts = sess = 0
        for _ in range(rounds):
            try:
                m, b = await pop3_session(port, a)
                msgs += m
                byts += b
                sess += 1
            except Exception as e:  # counted and reported
                errors.append(f"{a.split(':')[0]}: {e!r}"[:300])
        return msgs, byts, sess

    res = await asyncio.gather(*(client(a) for a in accts))
    wall = time.monotonic() - t0
    msgs = sum(r[0] for r in res)
    return {"clients": len(accts), "rounds": rounds, "sessions": sum(r[2] for r in res),
            "messages": msgs, "bytes": sum(r[1] for r in res), "wall_s": round(wall, 3),
            "msgs_per_s": round(msgs / wall, 1), "errors": len(errors), "error_samples": errors[:5],
            "loadgen_cpu_s": round(rusage_self() - cpu0, 3)}


# ---------------------------------------------------------------- FETCH all

async def fetch_run(port, acct, what):
    user, pw = split(acct)
    c = await Imap().connect(port)
    await c.login(user, pw)
    exists = 0

    def sel_sink(line):
        nonlocal exists
        p = line.split()
        if len(p) >= 3 and p[2] == b"EXISTS":
            exists = int(p[1])

    st, line = await c.cmd("EXAMINE INBOX", sink=sel_sink)
    if st != "OK":
        raise ImapError(f"EXAMINE: {line!r}")
    if what == "full":
        command = "UID FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[])"
    else:
        command = "FETCH 1:* (FLAGS ENVELOPE)"
    cpu0 = rusage_self()
    t0 = time.monotonic()
    t = c.tag()
    c.w.write(f"{t} {command}\r\n".encode())
    st, line, lit_bytes, untagged = await c.read_response(t)
    wall = time.monotonic() - t0
    cpu = rusage_self() - cpu0
    await c.cmd("LOGOUT")
    await c.close()
    return {"command": command, "status": st, "exists": exists, "fetch_responses": untagged,
            "literal_bytes": lit_bytes, "wall_s": round(wall, 4),
            "msgs_per_s": round(untagged / wall, 1), "loadgen_cpu_s": round(cpu, 3),
            "ok": st == "OK" and untagged == exists}


# ---------------------------------------------------------------- mixed (imaptest-like)

FETCH_FIELDS = ["UID", "FLAGS", "ENVELOPE", "INTERNALDATE", "BODY", "BODYSTRUCTURE", "RFC822.SIZE"]
HEADER_FIELDS = ["From", "To", "Cc", "Subject", "References", "In-Reply-To", "Message-ID", "Delivered-To"]
FETCH2_FIELDS = ["BODY.PEEK[HEADER]", "RFC822.HEADER", "BODY.PEEK[]", "BODY.PEEK[1]", "BODY.PEEK[TEXT]"]
FLAGS = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft", "$Label1", "$Label2"]
THRESHOLD = 30  # imaptest's default message_count_threshold ("msgs")


def seqset(seqs):
    seqs = sorted(set(seqs))
    out, i = [], 0
    while i < len(seqs):
        j = i
        while j + 1 < len(seqs) and seqs[j + 1] == seqs[j] + 1:
            j += 1
        out.append(str(seqs[i]) if i == j else f"{seqs[i]}:{seqs[j]}")
        i = j + 1
    return ",".join(out)


class Stats:
    def __init__(self):
        self.count = {}
        self.lat = {}
        self.no = {}
        self.errors = []
        self.stop = False

    def add(self, name, st, dt):
        if self.stop:
            return
        self.count[name] = self.count.get(name, 0) + 1
        self.lat[name] = self.lat.get(name, 0.0) + dt
        if st != "OK":
            self.no[name] = self.no.get(name, 0) + 1


async def timed(stats, c, name, text, sink=None, literal=None):
    t0 = time.monotonic()
    st, line = await c.cmd(text, sink=sink, literal=literal)
    stats.add(name, st, time.monotonic() - t0)
    if st == "BAD":
        raise ImapError(f"{name} BAD: {line[:200]!r}")
    return st


async def mixed_round(c, user, rng, stats, counter):
    """One pass of imaptest's default state machine after LOGIN (states with
    their default probabilities): LIST 50%, STATUS 50%, SELECT 100%,
    FETCH 100%, FETCH2 100% (again 30%), STORE 50%, DELETE (STORE +FLAGS
    \\Deleted) 100%, EXPUNGE 100%, APPEND 100% while fewer than 30 messages
    (again 5%). COPY is off in imaptest unless a destination is configured.
    The message count is tracked from EXISTS/EXPUNGE, as imaptest does."""
    view = [0]

    def track(line):
        p = line.split(b" ", 3)
        if len(p) >= 3 and p[0] == b"*":
            if p[2].startswith(b"EXISTS"):
                view[0] = int(p[1])
            elif p[2].startswith(b"EXPUNGE"):
                view[0] -= 1

    if rng.random() < 0.5:
        await timed(stats, c, "LIST", 'LIST "" *')
    if rng.random() < 0.5:
        await timed(stats, c, "STATUS", "STATUS INBOX (MESSAGES UNSEEN RECENT)")
    await timed(stats, c, "SELECT", "SELECT INBOX", sink=track)
    msgs = view[0]
    if msgs:
        n = min(msgs, 100)
        seqs = [rng.randrange(msgs) + 1 for _ in range(n)]
        items = []
        for _ in range(rng.randrange(4) + 1):
            if rng.randrange(4):
                items.append(rng.choice(FETCH_FIELDS))
            else:
                hf = " ".join(rng.choice(HEADER_FIELDS) for _ in range(rng.randrange(4) + 1))
                items.append(f"BODY.PEEK[HEADER.FIELDS ({hf})]")
        await timed(stats, c, "FETCH", f"FETCH {seqset(seqs)} ({' '.join(items)})", sink=track)
        while True:
            msgs = view[0]
            if not msgs:
                break
            await timed(stats, c, "FETCH2", f"FETCH {rng.randrange(msgs) + 1} (UID {rng.choice(FETCH2_FIELDS)})",
                        sink=track)
            if rng.random() >= 0.30:
                break
        msgs = view[0]
        if rng.random() < 0.5 and msgs > 1:
            cnt = rng.randrange(msgs if msgs < 10 else min(msgs // 5, 50))
            if cnt:
                seqs = [rng.randrange(msgs) + 1 for _ in range(cnt)]
                mode = rng.choice(["+", "-", ""])
                silent = ".SILENT" if rng.random() < 0.5 else ""
                fl = " ".join(rng.sample(FLAGS, rng.randrange(3) + 1))
                await timed(stats, c, "STORE", f"STORE {seqset(seqs)} {mode}FLAGS{silent} ({fl})", sink=track)
        msgs = view[0]
        cnt = rng.randrange(msgs - THRESHOLD) if msgs > THRESHOLD + 5 else rng.randrange(5)
        if cnt and msgs:
            seqs = [rng.randrange(msgs) + 1 for _ in range(cnt)]
            silent = ".SILENT" if rng.random() < 0.5 else ""
            await timed(stats, c, "DELETE", f"STORE {seqset(seqs)} +FLAGS{silent} (\\Deleted)", sink=track)
        await timed(stats, c, "EXPUNGE", "EXPUNGE", sink=track)
    while view[0] < THRESHOLD:
        counter[0] += 1
        flags = f" ({' '.join(rng.sample(FLAGS[:4], rng.randrange(2) + 1))})" if rng.random() < 0.5 else ""
        await timed(stats, c, "APPEND", f"APPEND INBOX{flags}",
                    literal=message(user, 1_000_000 + counter[0]), sink=track)
        if rng.random() >= 0.05:
            break


async def mixed_run(port, seconds, accts, persistent, seed):
    stats = Stats()
    deadline = time.monotonic() + seconds
    cpu0 = rusage_self()
    t0 = time.monotonic()

    async def client(idx, acct):
        rng = random.Random(seed * 1000 + idx)
        user, pw = split(acct)
        counter = [idx * 100000]
        c = None
        try:
            while time.monotonic() < deadline:
                if c is None:
                    c = await Imap().connect(port)
                    t1 = time.monotonic()
                    st, line = await c.cmd(f'LOGIN "{user}" "{pw}"')
                    stats.add("LOGIN", st, time.monotonic() - t1)
                    if st != "OK":
                        raise ImapError(f"LOGIN {user}: {line[:200]!r}")
                await mixed_round(c, user, rng, stats, counter)
                if not persistent:
                    await timed(stats, c, "LOGOUT", "LOGOUT")
                    await c.close()
                    c = None
        except Exception as e:
            stats.errors.append(f"{user}: {e!r}"[:300])
        if c is not None:
            try:
                await c.cmd("LOGOUT")
            except Exception:
                pass
            await c.close()

    tasks = [asyncio.create_task(client(i, a)) for i, a in enumerate(accts)]
    # Count only commands completed within the window.
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    stats.stop = True
    wall = time.monotonic() - t0
    await asyncio.gather(*tasks)
    total = sum(stats.count.values())
    return {"clients": len(accts), "persistent": persistent, "seconds": round(wall, 3),
            "commands": total, "cmds_per_s": round(total / wall, 1),
            "per_command": {k: {"n": v, "no": stats.no.get(k, 0),
                                "avg_ms": round(1000 * stats.lat[k] / v, 2)}
                            for k, v in sorted(stats.count.items())},
            "errors": len(stats.errors), "error_samples": stats.errors[:5],
            "loadgen_cpu_s": round(rusage_self() - cpu0, 3)}


# ---------------------------------------------------------------- idle

def proc_tree(roots):
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                parent[int(d)] = int(s[s.rindex(")") + 2:].split()[1])
            except OSError:
                pass
    kids = {}
    for p, pp in parent.items():
        kids.setdefault(pp, []).append(p)
    out, todo = [], [int(r) for r in roots]
    while todo:
        p = todo.pop()
        if p in parent and p not in out:
            out.append(p)
            todo.extend(kids.get(p, []))
    return out


def busy():
    """Machine-wide busy CPU ticks of user-space processes (/proc/stat
    user+nice+system minus kernel threads), as bench/lib/benchlib.py."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = v[0] + v[1] + v[2]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                r = st[st.rindex(")") + 2:].split()
                if int(r[1]) == 2 or d == "2":
                    total -= int(r[11]) + int(r[12])
            except OSError:
                pass
    return total


def memory(roots):
    """RSS and PSS in KiB summed over the process trees, and the process count."""
    rss = pss = n = 0
    for p in proc_tree(roots):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            n += 1
        except OSError:
            pass
    return {"rss_kib": rss, "pss_kib": pss, "procs": n}


def cpu_ticks(roots):
    t = 0
    for p in proc_tree(roots):
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            v = s[s.rindex(")") + 2:].split()
            t += int(v[11]) + int(v[12]) + int(v[13]) + int(v[14])
        except OSError:
            pass
    return t


def rss_fast(roots):
    """Anonymous RSS (resident minus file-backed and shared pages) in KiB,
    summed over the process trees, from /proc/PID/statm: cheap enough to poll,
    and unlike plain RSS it does not count the shared libraries of a
    thousand Dovecot processes a thousand times."""
    page = os.sysconf("SC_PAGE_SIZE") // 1024
    t = 0
    for p in proc_tree(roots):
        try:
            with open(f"/proc/{p}/statm") as f:
                v = f.read().split()
                t += (int(v[1]) - int(v[2])) * page
        except OSError:
            pass
    return t


async def idle_run(port, n, accts, conc, warmup, pids, hold, settle, cap_kib):
    sem = asyncio.Semaphore(conc)
    conns = []
    errors = []
    idling = 0
    capped = None  # (connections open, RSS KiB) when the memory cap stopped the ramp

    async def warm(i):
        user, pw = split(accts[i % len(accts)])
        async with sem:
            c = await Imap().connect(port)
            await c.login(user, pw)
            await c.cmd("SELECT INBOX")
            await c.cmd("LOGOUT")
            await c.close()

    t0 = time.monotonic()
    if warmup:
        await asyncio.gather(*(warm(i) for i in range(warmup)))
    warm_s = time.monotonic() - t0
    await asyncio.sleep(settle)
    before = memory(pids)

    async def watch_cap():
        nonlocal capped
        while True:
            await asyncio.sleep(0.5)
            r = rss_fast(pids)
            if r - anon0 > cap_kib:
                capped = (idling, r)
                return

    async def open_one(i):
        nonlocal idling
        user, pw = split(accts[i % len(accts)])
        async with sem:
            if capped:
                return
            try:
                c = await Imap().connect(port)
                await c.login(user, pw)
                st, line = await c.cmd("SELECT INBOX")
                if st != "OK":
                    raise ImapError(f"SELECT: {line[:200]!r}")
                t = c.tag()
                c.w.write(f"{t} IDLE\r\n".encode())
                l = await c.r.readuntil(b"\r\n")
                while not l.startswith(b"+"):
                    if l.startswith(t.encode()):
                        raise ImapError(f"IDLE: {l[:200]!r}")
                    l = await c.r.readuntil(b"\r\n")
                c.idle_tag = t
                conns.append(c)
                idling += 1
            except Exception as e:
                errors.append(f"{user}: {e!r}"[:300])

    t1 = time.monotonic()
    anon0 = rss_fast(pids) if pids else 0
    watcher = asyncio.create_task(watch_cap()) if cap_kib and pids else None
    await asyncio.gather(*(open_one(i) for i in range(n)))
    open_s = time.monotonic() - t1
    if watcher:
        watcher.cancel()
    await asyncio.sleep(settle)
    after = memory(pids)
    # Idle CPU: the server's CPU while all connections idle for HOLD s.
    c0 = cpu_ticks(pids)
    await asyncio.sleep(hold)
    c1 = cpu_ticks(pids)
    # Still alive? Every connection must still be open (no BYE, no EOF).
    alive = 0
    for c in conns:
        if not c.r.at_eof() and not c.r._buffer.startswith(b"* BYE"):
            alive += 1
    # End IDLE on a sample to check the sessions still answer.
    sample = conns[:: max(1, len(conns) // 50)]
    answered = 0

    async def done(c):
        nonlocal answered
        try:
            c.w.write(b"DONE\r\n")
            st, _, _, _ = await asyncio.wait_for(c.read_response(c.idle_tag), 30)
            if st == "OK":
                answered += 1
        except Exception:
            pass

    await asyncio.gather(*(done(c) for c in sample))
    for c in conns:
        c.w.close()
    per = lambda k: round((after[k] - before[k]) / max(1, idling), 2)
    return {"n": n, "idling": idling, "capped_at": capped, "cap_kib": cap_kib, "alive_after_hold": alive, "sample_done_ok": f"{answered}/{len(sample)}",
            "warmup": warmup, "warmup_s": round(warm_s, 2), "open_s": round(open_s, 2),
            "login_concurrency": conc, "before": before, "after": after,
            "kib_per_conn_rss": per("rss_kib"), "kib_per_conn_pss": per("pss_kib"),
            "hold_s": hold, "idle_cpu_ticks": c1 - c0, "clk_tck": os.sysconf("SC_CLK_TCK"),
            "errors": len(errors), "error_samples": errors[:5],
            "loadgen_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


# ---------------------------------------------------------------- report

SYSTEM_NAMES = {"embedded": "Posthorn embedded", "dovecot": "Dovecot"}
TESTS = [
    ("pop3", "POP3: USER/PASS, LIST, RETR every message, QUIT", "msgs/s", "msgs_per_s", "messages"),
    ("fetch-full", "IMAP `UID FETCH 1:* (UID FLAGS RFC822.SIZE BODY.PEEK[])`", "msgs/s", "msgs_per_s", None),
    ("fetch-headers", "IMAP `FETCH 1:* (FLAGS ENVELOPE)`", "msgs/s", "msgs_per_s", None),
    ("mixed", "IMAP mix (imaptest default profile), new LOGIN every round", "cmds/s", "cmds_per_s", "commands"),
    ("mixed-persistent", "IMAP mix, each client logged in once", "cmds/s", "cmds_per_s", "commands"),
]


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def _f(v, nd=0):
    return "n/a" if v is None else f"{v:,.{nd}f}"


def report(path):
    recs = [json.loads(l) for l in open(path) if l.strip()]
    systems = []
    for r in recs:
        if r.get("system") not in systems:
            systems.append(r["system"])

    def unit_cpu(r, units_key):
        """Server CPU ms per unit (message or command)."""
        if "server_cpu_ticks" not in r:
            return None
        if units_key:
            units = r.get(units_key) or 0
        else:  # fetch: every timed run fetched `exists` messages (logins included in the CPU)
            units = r.get("exists", 0) * r.get("times", 1)
        return 1000.0 * r["server_cpu_ticks"] / r["clk_tck"] / units if units else None

    print("| measurement | unit | " + " | ".join(SYSTEM_NAMES.get(s, s) for s in systems)
          + " | " + " | ".join(f"{SYSTEM_NAMES.get(s, s)} server CPU" for s in systems) + " | runs | other load, % |")
    print("|---|---|" + "---:|" * (2 * len(systems)) + "---|---|")
    for test, what, unit, key, units_key in TESTS:
        vals, cpus, runs, other = [], [], [], []
        for s in systems:
            rs = [r for r in recs if r.get("system") == s and r.get("test") == test and r.get("rep") != "warmup"]
            # A run with failed sessions still counts (its rate only counts
            # what completed); its errors are shown. A FETCH that did not
            # return every message does not count.
            good = [r for r in rs if r.get("ok", True)]
            vals.append(_median([r.get(key) for r in good]))
            cpus.append(_median([unit_cpu(r, units_key) for r in good]))
            errs = sum(r.get("errors", 0) for r in rs)
            runs.append(f"{len(good)}/{len(rs)}" + (f" ({errs} failed sessions)" if errs else ""))
            other.append("/".join(f"{r.get('other_pct', 0):.0f}" for r in rs) or "-")
        if not any(runs_ != "0/0" for runs_ in runs):
            continue
        cpu_unit = "ms/msg" if unit == "msgs/s" else "ms/cmd"
        print(f"| {what} | {unit} | " + " | ".join(f"**{_f(v)}**" for v in vals) + " | "
              + " | ".join(f"{_f(c, 3)} {cpu_unit}" if c is not None else "n/a" for c in cpus)
              + f" | {' ; '.join(runs)} | {' ; '.join(other)} |")
    print()
    idle = [r for r in recs if r.get("test") == "idle"]
    if idle:
        print("| system, configuration | N asked | N idling | PSS before → after, MiB | "
              "**KiB per idle connection** (PSS) | (RSS) | idle connections per GiB | "
              "time to open N | server CPU while idle, % of one core | other load, % |")
        print("|---|---:|---:|---|---:|---:|---:|---:|---:|---|")
        variants = []
        for r in idle:
            k = (r["system"], r.get("variant", ""))
            if k not in variants:
                variants.append(k)
        for s, v in variants:
            rs = [r for r in idle if r["system"] == s and r.get("variant", "") == v]
            pss = _median([r["kib_per_conn_pss"] for r in rs])
            rss = _median([r["kib_per_conn_rss"] for r in rs])
            n_id = _median([r["idling"] for r in rs])
            b = _median([r["before"]["pss_kib"] / 1024 for r in rs])
            a = _median([r["after"]["pss_kib"] / 1024 for r in rs])
            t = _median([r["open_s"] for r in rs])
            cpu = _median([100.0 * r["idle_cpu_ticks"] / r["clk_tck"] / r["hold_s"] for r in rs])
            notes = []
            for r in rs:
                if r.get("capped_at"):
                    notes.append(f"stopped opening at {r['capped_at'][0]} connections: server anonymous RSS "
                                 f"{r['capped_at'][1] / 1024:.0f} MiB, grown by more than the cap of "
                                 f"{r['cap_kib'] / 1024:.0f} MiB")
                if r.get("errors"):
                    notes.append(f"{r['errors']} connection errors, e.g. {r['error_samples'][:1]}")
            name = f"{SYSTEM_NAMES.get(s, s)}, {v}" if v else SYSTEM_NAMES.get(s, s)
            per_gib = 1048576 / pss if pss and pss > 0 else None
            print(f"| {name} | {rs[0]['n']:,} | {_f(n_id)} | {_f(b)} → {_f(a)} | **{_f(pss, 1)}** | {_f(rss, 1)} "
                  f"| {_f(per_gib)} | {_f(t, 1)} s | {_f(cpu, 1)} | "
                  + "/".join(f"{r.get('other_pct', 0):.0f}" for r in rs) + " |")
            for nt in notes:
                print(f"|  ↳ {nt} | | | | | | | | | |")
    print()
    print("Every run:")
    print()
    for r in recs:
        if r.get("test") in ("pop3", "fetch-full", "fetch-headers", "mixed", "mixed-persistent"):
            v = r.get("msgs_per_s", r.get("cmds_per_s"))
            extra = ""
            if r["test"].startswith("mixed"):
                extra = " " + ", ".join(f"{k} {d['n']}×{d['avg_ms']}ms" + (f" ({d['no']} NO)" if d["no"] else "")
                                        for k, d in r.get("per_command", {}).items())
            if r["test"].startswith("fetch"):
                extra = f" walls {r.get('all_wall_s')} s, {r.get('literal_bytes', 0) / 1e6:.1f} MB of literals"
            print(f"- {r['system']} {r['test']} rep {r.get('rep')}: {v} "
                  f"(errors {r.get('errors', 0)}, server CPU {r.get('server_cpu_ticks')} ticks, "
                  f"other load {r.get('other_pct')}%){extra}")
        elif r.get("test") == "idle":
            print(f"- {r['system']} idle {r.get('variant', '')} rep {r.get('rep')}: {r['idling']} of {r['n']} idling, "
                  f"RSS {r['before']['rss_kib'] // 1024} → {r['after']['rss_kib'] // 1024} MiB, "
                  f"PSS {r['before']['pss_kib'] // 1024} → {r['after']['pss_kib'] // 1024} MiB "
                  f"({r['after']['procs']} processes), {r['kib_per_conn_pss']} KiB/conn (PSS), "
                  f"opened in {r['open_s']} s, warm-up {r['warmup']} sessions in {r['warmup_s']} s, "
                  f"{r['alive_after_hold']} alive after {r['hold_s']} s, DONE answered {r['sample_done_ok']}, "
                  f"after closing: RSS {r.get('server_mem_end', {}).get('rss_kib', 0) // 1024} MiB")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pids", nargs="*", default=[],
                        help="server process trees: their CPU over the run, memory at the end")
    common.add_argument("--label", action="append", default=[], help="KEY=VALUE copied into the output")
    _add = sub.add_parser
    sub.add_parser = lambda name, **kw: _add(name, parents=[common], **kw)
    p = sub.add_parser("report")
    p.add_argument("results")
    p = sub.add_parser("fill")
    p.add_argument("port", type=int)
    p.add_argument("account")
    p.add_argument("count", type=int)
    p.add_argument("--seed-offset", type=int, default=0)
    p.add_argument("--depth", type=int, default=64)
    p.add_argument("--connections", type=int, default=1)
    p = sub.add_parser("fill-many")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("accounts", nargs="+")
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--depth", type=int, default=64)
    p = sub.add_parser("pop3")
    p.add_argument("port", type=int)
    p.add_argument("accounts", nargs="+")
    p.add_argument("--rounds", type=int, default=1)
    p = sub.add_parser("fetch")
    p.add_argument("port", type=int)
    p.add_argument("account")
    p.add_argument("what", choices=["full", "headers"])
    p.add_argument("--times", type=int, default=3, help="repeat; the median run is reported")
    p = sub.add_parser("mixed")
    p.add_argument("port", type=int)
    p.add_argument("seconds", type=float)
    p.add_argument("accounts", nargs="+")
    p.add_argument("--persistent", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("idle")
    p.add_argument("port", type=int)
    p.add_argument("n", type=int)
    p.add_argument("accounts", nargs="+")
    p.add_argument("--login-concurrency", type=int, default=20)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--hold", type=float, default=30)
    p.add_argument("--settle", type=float, default=3)
    p.add_argument("--cap-mib", type=int, default=0,
                   help="stop opening connections once the server's RSS grew by more than this")
    a = ap.parse_args()
    if a.cmd == "report":
        report(a.results)
        return
    clk = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    self0 = rusage_self()
    c0 = cpu_ticks(a.pids) if a.pids else 0
    b0 = busy()

    if a.cmd == "fill":
        t0 = time.monotonic()
        k = a.connections
        per = [a.count // k + (1 if i < a.count % k else 0) for i in range(k)]
        offs = [sum(per[:i]) for i in range(k)]

        async def go():
            return await asyncio.gather(*(fill_one(a.port, a.account, per[i], a.seed_offset + offs[i], a.depth)
                                          for i in range(k)))

        errs = sum(asyncio.run(go()))
        wall = time.monotonic() - t0
        out = {"appended": a.count - errs, "errors": errs, "wall_s": round(wall, 3),
               "msgs_per_s": round(a.count / wall, 1)}
    elif a.cmd == "fill-many":
        out = asyncio.run(fill_many(a.port, a.count, a.accounts, a.parallel, 0, a.depth))
    elif a.cmd == "pop3":
        out = asyncio.run(pop3_run(a.port, a.accounts, a.rounds))
    elif a.cmd == "fetch":
        runs = [asyncio.run(fetch_run(a.port, a.account, a.what)) for _ in range(a.times)]
        runs.sort(key=lambda r: r["wall_s"])
        out = dict(runs[len(runs) // 2])
        out["times"] = a.times
        out["all_wall_s"] = [r["wall_s"] for r in runs]
        out["ok"] = all(r["ok"] for r in runs)
    elif a.cmd == "mixed":
        out = asyncio.run(mixed_run(a.port, a.seconds, a.accounts, a.persistent, a.seed))
    elif a.cmd == "idle":
        out = asyncio.run(idle_run(a.port, a.n, a.accounts, a.login_concurrency, a.warmup,
                                   a.pids, a.hold, a.settle, a.cap_mib * 1024))
    wall = time.monotonic() - t0
    for kv in a.label:
        k, v = kv.split("=", 1)
        out[k] = v
    out["total_wall_s"] = round(wall, 3)
    out["clk_tck"] = clk
    if a.pids:
        c1 = cpu_ticks(a.pids)
        b1 = busy()
        own = (rusage_self() - self0) * clk
        out["server_cpu_ticks"] = c1 - c0
        out["other_pct"] = round(max(0.0, 100.0 * (b1 - b0 - (c1 - c0) - own) / (wall * clk * os.cpu_count())), 1)
        out["server_mem_end"] = memory(a.pids)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
