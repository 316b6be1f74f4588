#!/usr/bin/env python3
"""Small helpers for bench/smtp.sh (standard library only).

  benchlib.py freeport [COUNT]        print COUNT free loopback TCP ports
  benchlib.py cpu PID...              CPU clock ticks used so far by the process
                                      trees rooted at PID...: for every live
                                      process in the tree utime+stime, plus
                                      cutime+cstime (children already reaped,
                                      e.g. Postfix smtpd processes that exited)
  benchlib.py cpu-each PID...         the same, one number per PID
  benchlib.py busy                    machine-wide busy CPU ticks of processes
                                      (/proc/stat minus kernel threads)
  benchlib.py timed OUTFILE CMD...    run CMD, write "wall_s user_s sys_s rc" to
                                      OUTFILE (resource usage of CMD only)
  benchlib.py metric PORT NAME        value of a Prometheus metric (sum over
                                      label sets) from http://127.0.0.1:PORT/metrics,
                                      or -1 if unreachable
  benchlib.py report TSV              print the markdown tables (medians)
"""

import os
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request


def freeport(count=1):
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(map(str, ports)))


def _stat(pid):
    """(ppid, utime, stime, cutime, cstime) or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0]=state rest[1]=ppid ... rest[11]=utime rest[12]=stime rest[13]=cutime rest[14]=cstime
    return int(rest[1]), int(rest[11]), int(rest[12]), int(rest[13]), int(rest[14])


def cpu(roots, each=False):
    if each:
        # one total per root, space separated
        import io, contextlib
        out = []
        for r in roots:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                cpu([r])
            out.append(buf.getvalue().strip())
        print(" ".join(out))
        return
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                stats[int(d)] = st
    children = {}
    for pid, st in stats.items():
        children.setdefault(st[0], []).append(pid)
    total, seen = 0, set()
    todo = [int(r) for r in roots]
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        _, u, s, cu, cs = stats[pid]
        total += u + s + cu + cs
        todo.extend(children.get(pid, []))
    print(total)


def busy():
    """Busy CPU ticks of user-space processes, machine-wide: user+nice+system
    from /proc/stat minus what kernel threads (children of kthreadd, e.g. the
    ext4 journal thread doing our fsyncs) used. irq/softirq are left out."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = v[0] + v[1] + v[2]
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st and (st[0] == 2 or d == "2"):
                total -= st[1] + st[2]
    print(total)


def timed(outfile, cmd):
    t0 = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    rc = subprocess.call(cmd)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(outfile, "w") as f:
        f.write(
            f"{wall:.3f} {after.ru_utime - before.ru_utime:.3f} "
            f"{after.ru_stime - before.ru_stime:.3f} {rc}\n"
        )
    sys.exit(rc)


def metric(port, name):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except Exception:
        print(-1)
        return
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(None, 1)[1])
            found = True
    print(int(total) if found else 0)


def fmt(v, nd=2):
    if v is None:
        return "n/a"
    return f"{v:.{nd}f}"


def report(tsv):
    """Markdown table: medians over the successful runs of each system."""
    rows, order = {}, []
    with open(tsv) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            rec = dict(zip(header, line.rstrip("\n").split("\t")))
            if rec["system"] not in rows:
                rows[rec["system"]] = []
                order.append(rec["system"])
            rows[rec["system"]].append(rec)

    def median(vals):
        return statistics.median(vals) if vals else None

    print(
        "| system | N per run | runs ok | accepted msgs/s | end-to-end msgs/s "
        "| server CPU ms/msg, accept window | server CPU ms/msg, until delivered "
        "| backing stores CPU ms/msg | drain after last 250, s | smtp-source CPU ms/msg | other processes, % of machine |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in order:
        recs = rows[s]
        good = [r for r in recs if r["ok"] == "1"]
        tck = float(recs[0]["clk_tck"])

        def per_msg(key):
            return median([float(r[key]) * 1000.0 / tck / int(r["n"])
                           for r in good if r[key] not in ("", "NA")])

        rate = median([float(r["rate"]) for r in good])
        e2e = median([int(r["n"]) / (float(r["accept_s"]) + float(r["drain_s"])) for r in good])
        backing = per_msg("backing_ticks_total")
        drain = median([float(r["drain_s"]) for r in good])
        lg = median([float(r["loadgen_cpu_s"]) * 1000.0 / int(r["n"]) for r in good])
        ns = sorted({r["n"] for r in good}) or sorted({r["n"] for r in recs})
        print(
            f"| {s} | {'/'.join(ns)} | {len(good)} of {len(recs)} | {fmt(rate, 0)} | {fmt(e2e, 0)} "
            f"| {fmt(per_msg('cpu_ticks_accept'), 3)} | {fmt(per_msg('cpu_ticks_total'), 3)} "
            f"| {fmt(backing, 3) if backing is not None else '—'} | {fmt(drain, 1)} "
            f"| {fmt(lg, 3)} | {'/'.join(r['other_cpu_pct'] for r in good) or '—'} |"
        )
    print()
    print("Every run (failed runs are excluded from the medians above):")
    print()
    for s in order:
        for r in rows[s]:
            tck = float(r["clk_tck"])
            c = float(r["cpu_ticks_accept"]) * 1000.0 / tck / int(r["n"])
            ct = float(r["cpu_ticks_total"]) * 1000.0 / tck / int(r["n"])
            status = "ok" if r["ok"] == "1" else "FAILED"
            print(
                f"- {s} run {r['rep']} ({status}): N={r['n']}, accepted {r['accepted']} in "
                f"{float(r['accept_s']):.2f} s = {float(r['rate']):.0f} msg/s, delivered {r['delivered']}, "
                f"drain {r['drain_s']} s, server CPU {c:.3f} ms/msg (accept) / {ct:.3f} ms/msg "
                f"(until delivered), other load {r['other_cpu_pct']}%"
            )


def main():
    cmd = sys.argv[1]
    if cmd == "freeport":
        freeport(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    elif cmd == "cpu":
        cpu(sys.argv[2:])
    elif cmd == "cpu-each":
        cpu(sys.argv[2:], each=True)
    elif cmd == "busy":
        busy()
    elif cmd == "timed":
        timed(sys.argv[2], sys.argv[3:])
    elif cmd == "metric":
        metric(sys.argv[2], sys.argv[3])
    elif cmd == "report":
        report(sys.argv[2])
    else:
        sys.exit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    main()
