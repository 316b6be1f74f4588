"""A scripted SMTP sink for delivery tests (aiosmtpd).

    python3 smtp_sink.py IP PORT DIR

DIR/script.json (optional) scripts replies per stage, consumed one per
transaction: {"mail": [...], "rcpt": [...], "data": [...]}; an entry that is
null or a missing/exhausted list means the normal answer (250). Example:
{"rcpt": ["451 4.3.0 try later", "451 4.3.0 try later"]} defers the first
two transactions at RCPT.

{"data_delay": 0.1} waits that many seconds before answering each DATA
(a slow peer, so fault tests can kill the sender while messages are in
flight).

{"auth": ["user", "password"]} requires AUTH (PLAIN or LOGIN) with exactly
these credentials before MAIL (530 otherwise; 535 for others); AUTH is
offered only after STARTTLS when the sink has a certificate, and in plain
text when it has none. Every AUTH try is an event (stage "auth", login,
success); msg-N.json gets "auth": the login of the session (or null).

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
from aiosmtpd.smtp import AuthResult, LoginPassword


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
        delay = self.script.get("data_delay")
        if delay:
            await asyncio.sleep(delay)
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
                "auth": session.auth_data if session.authenticated else None,
            }).encode())
            self.write("msg-%d.eml" % n, envelope.original_content)
        self.event(stage="data", reply=reply)
        return reply

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        want = self.script.get("auth")
        ok = False
        login = None
        if isinstance(auth_data, LoginPassword) and want:
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            ok = [login, password] == list(want)
        self.event(stage="auth", mechanism=mechanism, login=login, success=ok)
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)


def main():
    ip, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    tls = None
    cert = os.path.join(directory, "cert.pem")
    if os.path.exists(cert):
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, os.path.join(directory, "key.pem"))
    sink = Sink(directory)
    auth = {}
    if sink.script.get("auth"):
        auth = dict(
            authenticator=sink.authenticator,
            auth_required=True,
            auth_require_tls=tls is not None,
        )
    controller = Controller(
        sink,
        hostname=ip,
        port=port,
        server_hostname="sink.test",
        decode_data=False,
        enable_SMTPUTF8=True,
        # The test harness checks the greeting itself.
        ready_timeout=60,
        tls_context=tls,
        **auth,
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
