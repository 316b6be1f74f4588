"""A scripted SMTP sink for delivery tests (aiosmtpd).

    python3 smtp_sink.py IP PORT DIR

DIR/script.json (optional) scripts replies per stage, consumed one per
transaction: {"mail": [...], "rcpt": [...], "data": [...]}; an entry that is
null or a missing/exhausted list means the normal answer (250). Example:
{"rcpt": ["451 4.3.0 try later", "451 4.3.0 try later"]} defers the first
two transactions at RCPT.

Records, in DIR:
  events.jsonl  one JSON object per MAIL/RCPT/DATA with the reply given
  msg-N.eml     the content of the N-th accepted message (N from 1), as received
  msg-N.json    its envelope: mail_from, rcpt_tos, mail_options, rcpt_options,
                tls (whether the session had done STARTTLS)
With DIR/cert.pem and DIR/key.pem it offers STARTTLS.
Files are written to a temporary name and renamed, so a reader never sees
a partial one.
"""

import asyncio
import json
import os
import signal
import ssl
import sys

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, directory):
        self.dir = directory
        path = os.path.join(directory, "script.json")
        self.script = {}
        if os.path.exists(path):
            with open(path) as f:
                self.script = json.load(f)
        self.accepted = 0

    def scripted(self, stage):
        replies = self.script.get(stage) or []
        if replies:
            return replies.pop(0)
        return None

    def event(self, **fields):
        with open(os.path.join(self.dir, "events.jsonl"), "a") as f:
            f.write(json.dumps(fields) + "\n")

    def write(self, name, data):
        tmp = os.path.join(self.dir, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.dir, name))

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = self.scripted("mail") or "250 2.1.0 OK"
        self.event(stage="mail", address=address, options=mail_options, reply=reply)
        if reply.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            envelope.rcpt_options_all = []
        return reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.scripted("rcpt") or "250 2.1.5 OK"
        self.event(stage="rcpt", address=address, options=rcpt_options, reply=reply)
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options_all.append(rcpt_options)
        return reply

    async def handle_DATA(self, server, session, envelope):
        reply = self.scripted("data") or None
        if reply is None:
            self.accepted += 1
            n = self.accepted
            reply = "250 2.0.0 OK: queued as sink-%d" % n
            self.write("msg-%d.json" % n, json.dumps({
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "mail_options": envelope.mail_options,
                "rcpt_options": envelope.rcpt_options_all,
                "tls": session.ssl is not None,
            }).encode())
            self.write("msg-%d.eml" % n, envelope.original_content)
        self.event(stage="data", reply=reply)
        return reply


def main():
    ip, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    tls = None
    cert = os.path.join(directory, "cert.pem")
    if os.path.exists(cert):
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, os.path.join(directory, "key.pem"))
    controller = Controller(
        Sink(directory),
        hostname=ip,
        port=port,
        server_hostname="sink.test",
        decode_data=False,
        enable_SMTPUTF8=True,
        # The test harness checks the greeting itself.
        ready_timeout=60,
        tls_context=tls,
    )
    controller.start()
    print("listening on %s:%d" % (ip, port), flush=True)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


if __name__ == "__main__":
    main()
