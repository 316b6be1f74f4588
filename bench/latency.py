#!/usr/bin/env python3
"""Latency from SMTP `250` to the message being visible over IMAP.

An IMAP client (STARTTLS, LOGIN, SELECT INBOX, IDLE) timestamps every
`* N EXISTS`; SMTP senders timestamp every `250` after DATA. Once k
messages have been accepted, the k-th message is visible when EXISTS
reaches k: latency_k = t(EXISTS >= k) - t(k-th 250). That is exactly "how
long after the server said 250 could a client see it", whichever message
it was.

usage: latency.py SMTP_PORT IMAP_PORT USER PASSWORD RCPT [RATE] [SECONDS] [SENDERS]
"""
import multiprocessing, socket, ssl, smtplib, sys, threading, time, re

smtp_port, imap_port, user, password, rcpt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rate = float(sys.argv[6]) if len(sys.argv) > 6 else 200.0
seconds = float(sys.argv[7]) if len(sys.argv) > 7 else 15.0
senders = int(sys.argv[8]) if len(sys.argv) > 8 else 4

body = ("Subject: latency\r\n\r\n" + "x" * 5000 + "\r\n").encode()

def sender(i, out):
    # Each sender is a process of its own: sender threads in this process
    # would hold the GIL while the IDLE reader waits to timestamp an EXISTS
    # (Python's switch interval is 5 ms), adding the client's own delays to
    # the tail. time.monotonic() is CLOCK_MONOTONIC, one clock for all
    # processes of the machine.
    go.wait()
    c = smtplib.SMTP("127.0.0.1", smtp_port, timeout=60)
    c.ehlo("lat.example.org")
    interval = senders / rate
    nxt = stop.value - seconds + i * interval / senders
    times = []
    while time.monotonic() < stop.value:
        d = nxt - time.monotonic()
        if d > 0: time.sleep(d)
        c.sendmail("lat@example.org", [rcpt], body)
        times.append(time.monotonic())
        nxt += interval
    c.quit()
    out.put(times)

# Forked before any connection exists; they start on `go`.
go, stop, out = multiprocessing.Event(), multiprocessing.Value("d", 0.0), multiprocessing.Queue()
procs = [multiprocessing.Process(target=sender, args=(i, out)) for i in range(senders)]
for p in procs: p.start()

ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection(("127.0.0.1", imap_port), timeout=60)
f = s.makefile("rb")
def line(fh): return fh.readline().decode(errors="replace")
line(f)
s.sendall(b"a STARTTLS\r\n")
while not line(f).startswith("a "): pass
t = ctx.wrap_socket(s); tf = t.makefile("rb")
t.sendall(f"b LOGIN {user} {password}\r\n".encode())
while True:
    l = line(tf)
    if l.startswith("b "):
        assert l.startswith("b OK"), l
        break
t.sendall(b"c SELECT INBOX\r\n")
base = 0
while True:
    l = line(tf)
    m = re.match(r"\* (\d+) EXISTS", l)
    if m: base = int(m.group(1))
    if l.startswith("c "): break
t.sendall(b"d IDLE\r\n")
assert line(tf).startswith("+"), "no IDLE continuation"

visible = []  # (time, count)
def reader():
    while True:
        try:
            l = line(tf)
        except Exception:
            return
        if not l: return
        m = re.match(r"\* (\d+) EXISTS", l)
        if m: visible.append((time.monotonic(), int(m.group(1)) - base))
threading.Thread(target=reader, daemon=True).start()

stop.value = time.monotonic() + seconds
go.set()
accepted = []  # times of 250
for _ in procs: accepted.extend(out.get())
for p in procs: p.join()
deadline = time.monotonic() + 30
while time.monotonic() < deadline and (not visible or visible[-1][1] < len(accepted)):
    time.sleep(0.05)
accepted.sort()
lat = []
vi = 0
for k, ta in enumerate(accepted, start=1):
    while vi < len(visible) and visible[vi][1] < k: vi += 1
    if vi == len(visible):
        print(f"message {k} never became visible", file=sys.stderr); sys.exit(1)
    lat.append(max(0.0, visible[vi][0] - ta))
lat.sort()
def pct(p): return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000
print(f"messages {len(lat)} rate {len(lat)/seconds:.0f}/s  p50 {pct(50):.1f} ms  p90 {pct(90):.1f} ms  p99 {pct(99):.1f} ms  max {lat[-1]*1000:.1f} ms")
