"""The real peers of Mail Bagging: the customer's MTA (aiosmtpd, told how to
answer), Postfix's smtp-sink, fetchmail and msmtp."""

import asyncio
import glob
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from ports import free_port  # noqa: F401 (tests import it from here)




class Received:
    def __init__(self, mail_from, rcpts, data, mail_options, rcpt_options,
                 tls=None):
        self.mail_from = mail_from
        self.rcpts = rcpts
        self.data = data
        self.mail_options = mail_options
        self.rcpt_options = rcpt_options
        # the session's TLS protocol (e.g. "TLSv1.3"), None in the clear
        self.tls = tls

    @property
    def subject(self):
        for line in self.data.split(b"\r\n"):
            if line.lower().startswith(b"subject:"):
                return line[8:].strip().decode()
            if not line:
                break
        return None


class CustomerHandler:
    """What the customer's MTA answers. Changeable while it runs."""

    def __init__(self):
        self.lock = threading.Lock()
        self.messages = []
        # address (lowercase) -> reply for RCPT TO
        self.rcpt_replies = {}
        # reply after DATA, None: 250
        self.data_reply = None
        # close the connection instead of answering the Nth DATA (1-based,
        # counted over the handler's life)
        self.drop_at = None
        self.datas = 0
        self.delay = 0.0
        self.connections = 0
        # the sessions that said EHLO (aiosmtpd's own readiness probe at
        # start doesn't)
        self.ehlo_sessions = set()
        self.connect_times = []
        self.open_connections = 0
        self.max_open = 0

    async def handle_EHLO(self, server, session, envelope, hostname,
                          responses):
        with self.lock:
            # one connection, before and after STARTTLS
            self.ehlo_sessions.add(session.peer)
        session.host_name = hostname
        return responses

    @property
    def sessions(self):
        """How many sessions said EHLO."""
        with self.lock:
            return len(self.ehlo_sessions)

    async def handle_RCPT(self, server, session, envelope, address,
                          rcpt_options):
        reply = self.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.datas += 1
            n = self.datas
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.drop_at is not None and n >= self.drop_at:
            # a crash of the customer's MTA: no reply at all
            server.transport.abort()
            return "421 4.3.0 gone"
        if self.data_reply:
            return self.data_reply
        tls = None
        if session.ssl:
            # the cipher: (name, protocol, bits)
            cipher = session.ssl.get("cipher")
            tls = cipher[1] if cipher else "TLS"
        with self.lock:
            self.messages.append(Received(
                envelope.mail_from, list(envelope.rcpt_tos),
                envelope.original_content or envelope.content,
                list(envelope.mail_options),
                [list(o) for o in envelope.rcpt_options], tls))
        return "250 2.0.0 OK queued"


class CountingSMTP(SMTP):
    # a customer's MTA takes long lines (Postfix does): aiosmtpd's own
    # limit would refuse them
    line_length_limit = 1 << 20

    def connection_made(self, transport):
        h = self.event_handler
        with h.lock:
            h.connections += 1
            h.connect_times.append(time.time())
            h.open_connections += 1
            h.max_open = max(h.max_open, h.open_connections)
        super().connection_made(transport)

    def connection_lost(self, error):
        h = self.event_handler
        with h.lock:
            h.open_connections -= 1
        super().connection_lost(error)


class CustomerController(Controller):
    def __init__(self, handler, tls_context=None, **kw):
        self.customer_tls_context = tls_context
        super().__init__(handler, **kw)

    def factory(self):
        return CountingSMTP(self.handler, decode_data=False,
                            enable_SMTPUTF8=False,
                            hostname="customer.test",
                            tls_context=self.customer_tls_context)


class CustomerMTA:
    """aiosmtpd on a loopback port, as the customer's own server; with
    cert (a (certfile, keyfile) pair) it offers STARTTLS."""

    def __init__(self, port=None, cert=None):
        self.handler = CustomerHandler()
        self.port = port or free_port()
        tls_context = None
        if cert is not None:
            tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_context.load_cert_chain(*cert)
        self.controller = CustomerController(self.handler,
                                             tls_context=tls_context,
                                             hostname="127.0.0.1",
                                             port=self.port)
        self.running = False

    def start(self):
        self.controller.start()
        self.running = True
        # the controller's own check that the server is up
        wait = time.time() + 5
        while self.handler.open_connections and time.time() < wait:
            time.sleep(0.01)
        with self.handler.lock:
            self.handler.connections = 0
            self.handler.connect_times = []
            self.handler.max_open = 0
        return self

    def stop(self):
        if self.running:
            self.controller.stop()
            self.running = False

    @property
    def messages(self):
        with self.handler.lock:
            return list(self.handler.messages)

    def wait_for(self, count, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.messages) >= count:
                return self.messages
            time.sleep(0.05)
        raise AssertionError("customer MTA got %d messages, not %d"
                             % (len(self.messages), count))

    @property
    def hostport(self):
        return "127.0.0.1:%d" % self.port


class SmtpSink:
    """Postfix's smtp-sink, dumping every message to a directory."""

    def __init__(self, extra_args=(), count_only=False):
        self.dir = tempfile.mkdtemp(prefix="bag-sink-")
        os.chmod(self.dir, 0o777)
        self.port = free_port()
        args = ["/usr/sbin/smtp-sink"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        if not count_only:
            args += ["-d", self.dir + "/"]
        args += list(extra_args) + ["127.0.0.1:%d" % self.port, "64"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port),
                                         timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("smtp-sink did not start")

    def files(self):
        return sorted(glob.glob(os.path.join(self.dir, "*")))

    def wait_for(self, count, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.files()) >= count:
                return self.files()
            time.sleep(0.05)
        raise AssertionError("smtp-sink got %d messages, not %d"
                             % (len(self.files()), count))

    @property
    def hostport(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_fetchmail(args=(), rc_text=None, timeout=60):
    """fetchmail in a home of its own, with args, or with rc_text as its
    rc file."""
    with tempfile.TemporaryDirectory(prefix="bag-fetchmail-") as home:
        cmd = ["fetchmail", "-v", "--nosyslog",
               # its own lock: as root it would be /var/run/fetchmail.pid,
               # and a second fetchmail at once would refuse to run
               "--pidfile", os.path.join(home, "fetchmail.pid")]
        if rc_text is not None:
            rc = os.path.join(home, "fetchmailrc")
            with open(rc, "w") as f:
                f.write(rc_text)
            os.chmod(rc, 0o600)
            cmd += ["-f", rc]
        return subprocess.run(cmd + list(args), capture_output=True,
                              text=True, timeout=timeout,
                              env=dict(os.environ, HOME=home))


def fetchmail_etrn(port, domains, timeout=60, ssl_ca=None):
    """fetchmail --protocol ETRN: one ETRN per entry, verbatim; with
    ssl_ca over implicit TLS (--ssl), the certificate checked against that
    CA."""
    tls = [] if ssl_ca is None else \
        ["--ssl", "--sslcertck", "--sslcertfile", ssl_ca,
         "--sslcommonname", "localhost"]
    return run_fetchmail(["--protocol", "ETRN", "--service", str(port),
                          "--fetchdomains", ",".join(domains)] + tls +
                         ["127.0.0.1"], timeout=timeout)


def fetchmail_odmr(port, user, password, domains, smtphost, timeout=120,
                   ssl_ca=None):
    """fetchmail as the customer's ODMR client, pumping the reversed
    session to smtphost (host/port); with ssl_ca over implicit TLS
    (fetchmail --ssl), the certificate checked against that CA."""
    # fetchmail checks the certificate's DNS names only, not its
    # addresses: the name it must have
    tls = "" if ssl_ca is None else \
        "  ssl sslcertck sslcertfile %s sslcommonname localhost\n" % ssl_ca
    return run_fetchmail(rc_text=(
        'poll 127.0.0.1 protocol ODMR service %d:\n'
        '  user "%s" password "%s" fetchdomains %s\n'
        '  smtphost %s\n%s'
        % (port, user, password, ",".join(domains), smtphost, tls)),
        timeout=timeout)


def msmtp_etrn(port, node, timeout=60, ca_file=None):
    """msmtp --rmqs (ETRN); with ca_file over STARTTLS, the certificate
    checked against that CA."""
    tls = ["--tls=off"] if ca_file is None else \
        ["--tls=on", "--tls-starttls=on", "--tls-trust-file=" + ca_file,
         "--tls-certcheck=on"]
    return subprocess.run(
        ["msmtp", "--host=127.0.0.1", "--port=%d" % port] + tls +
        ["--auth=off", "--rmqs=" + node],
        capture_output=True, text=True, timeout=timeout)


def fetchmail_pop3_multidrop(port, user, password, domain, smtphost,
                             keep=False, timeout=120):
    """fetchmail collecting a POP3 connector box in multidrop mode: each
    message goes to the recipient its X-Envelope-To names (so a Bcc
    reaches its recipient), through smtphost (host/port)."""
    return run_fetchmail(rc_text=(
        'poll 127.0.0.1 protocol POP3 service %d no dns\n'
        '  localdomains %s envelope "X-Envelope-To"\n'
        '  user "%s" password "%s" is * here\n'
        "  sslproto '' smtphost %s smtpaddress %s%s\n"
        % (port, domain, user, password, smtphost, domain,
           " keep" if keep else "")),
        timeout=timeout)


class CertAuthority:
    """A CA made with openssl for one test session, and the certificates
    it signed: server (localhost, mx.cust.test, 127.0.0.1), and a rogue
    self-signed one with the same names that no CA vouches for."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bag-tls-")
        os.chmod(self.dir, 0o755)
        self.ca = self._path("ca.pem")
        ca_key = self._path("ca.key")
        self.cert = self._path("server.pem")
        self.key = self._path("server.key")
        self.rogue_cert = self._path("rogue.pem")
        self.rogue_key = self._path("rogue.key")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes"]
        self._openssl(["req", "-x509"] + ec + ["-keyout", ca_key, "-out",
                      self.ca, "-days", "3", "-subj", "/CN=Bag Test CA",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        san = "subjectAltName=DNS:localhost,DNS:mx.cust.test,IP:127.0.0.1"
        csr = self._path("server.csr")
        self._openssl(["req"] + ec + ["-keyout", self.key, "-out", csr,
                      "-subj", "/CN=localhost"])
        ext = self._path("server.ext")
        with open(ext, "w") as f:
            f.write(san + "\nbasicConstraints=CA:FALSE\n"
                    "extendedKeyUsage=serverAuth\n")
        self._openssl(["x509", "-req", "-in", csr, "-CA", self.ca,
                       "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
                       "-out", self.cert, "-extfile", ext])
        self._openssl(["req", "-x509"] + ec + ["-keyout", self.rogue_key,
                      "-out", self.rogue_cert, "-days", "2", "-subj",
                      "/CN=localhost", "-addext", san])
        for name in os.listdir(self.dir):
            os.chmod(self._path(name), 0o644)
        # the names OpenSSL's CA directory lookup wants (fetchmail's
        # sslcertpath)
        subprocess.run(["openssl", "rehash", self.dir], check=False,
                       capture_output=True)

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _openssl(self, args):
        r = subprocess.run(["openssl"] + args, capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError("openssl %s: %s" % (args[0], r.stderr))

    def dovecot_config(self):
        """Dovecot's ssl settings for these certificates."""
        return ("ssl = yes\nssl_cert = <%s\nssl_key = <%s\n"
                % (self.cert, self.key))

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)
