"""A private Postfix instance: the MTA in front of the sandbox's LMTP (or a
customer's MTA), with its own config_directory and queue_directory under
a temporary directory, loopback ports only, started and stopped through
its own master (../shared/MTA-NOTES.md has the recipe). It touches nothing
of the system's Postfix. Needs root (Postfix's master drops to its
postfix user)."""

import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time

from ports import free_port

POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
SYSTEM_MASTER_CF = "/etc/postfix/master.cf"

# what postfix post-install creates, without its two seconds of checks
QUEUE_DIRS = {
    "active": ("postfix", None, 0o700), "bounce": ("postfix", None, 0o700),
    "corrupt": ("postfix", None, 0o700), "defer": ("postfix", None, 0o700),
    "deferred": ("postfix", None, 0o700), "flush": ("postfix", None, 0o700),
    "hold": ("postfix", None, 0o700), "incoming": ("postfix", None, 0o700),
    "private": ("postfix", None, 0o700), "saved": ("postfix", None, 0o700),
    "trace": ("postfix", None, 0o700),
    "maildrop": ("postfix", "postdrop", 0o730),
    "public": ("postfix", "postdrop", 0o710),
    "pid": ("root", None, 0o755),
}


def postfix_available():
    return os.geteuid() == 0 and os.access(POSTFIX_MASTER, os.X_OK)


class Postfix:
    """main: extra main.cf settings; smtpd: -o options of the public
    smtpd (e.g. smtpd_discard_ehlo_keywords=dsn); aliases: virtual alias
    map, address -> list of addresses."""

    def __init__(self, name, lmtp_port=None, domains=("example.com",),
                 aliases=None, main=None, smtpd=None):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="mirror-postfix-")
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.lmtp_port = lmtp_port
        self.domains = list(domains)
        self.aliases = dict(aliases or {})
        self.main = dict(main or {})
        self.smtpd = dict(smtpd or {})
        self.running = False

    @property
    def etc(self):
        return os.path.join(self.dir, "etc")

    @property
    def queue(self):
        return os.path.join(self.dir, "queue")

    @property
    def maillog_path(self):
        return os.path.join(self.dir, "maillog")

    def _write_config(self):
        d = self.dir
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": os.path.join(d, "data"),
            "daemon_directory": "/usr/lib/postfix/sbin",
            "shlib_directory": "/usr/lib/postfix",
            "command_directory": "/usr/sbin",
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mx.%s.invalid" % self.name,
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions":
                "permit_mynetworks, reject_unauth_destination",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "disable_dns_lookups": "yes",
            "maillog_file": self.maillog_path,
            "maillog_file_prefixes": d,
            "multi_instance_name": self.name,
            "syslog_name": "postfix-" + self.name,
            "virtual_mailbox_domains": ", ".join(self.domains),
            "virtual_alias_maps": "texthash:" + os.path.join(d, "virtual"),
            # a test sees a failed delivery at once, and nothing waits long
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "queue_run_delay": "1s",
            "delay_warning_time": "0",
        }
        if self.lmtp_port is not None:
            settings["virtual_transport"] = \
                "lmtp:inet:127.0.0.1:%d" % self.lmtp_port
        settings.update(self.main)
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            for k, v in settings.items():
                f.write("%s = %s\n" % (k, v))
        with open(os.path.join(d, "virtual"), "w") as f:
            for src, targets in self.aliases.items():
                f.write("%s %s\n" % (src, ", ".join(targets)))
        # the system's master.cf without chroots, its smtp listener on
        # this instance's loopback port
        smtpd = " ".join("-o %s=%s" % kv for kv in self.smtpd.items())
        lines = []
        with open(SYSTEM_MASTER_CF) as f:
            for line in f:
                fields = line.split()
                if re.match(r"^smtp\s+inet\s", line):
                    line = "127.0.0.1:%d inet n - n - - smtpd %s\n" \
                        % (self.port, smtpd)
                elif len(fields) >= 8 and not line[0].isspace() and \
                        not line.startswith("#") and fields[4] == "y":
                    fields[4] = "n"
                    line = "\t".join(fields) + "\n"
                lines.append(line)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.writelines(lines)

    def start(self):
        os.makedirs(self.etc, exist_ok=True)
        data = os.path.join(self.dir, "data")
        os.makedirs(data, exist_ok=True)
        shutil.chown(data, "postfix")
        for sub, (user, group, mode) in QUEUE_DIRS.items():
            path = os.path.join(self.queue, sub)
            os.makedirs(path, exist_ok=True)
            os.chown(path, pwd.getpwnam(user).pw_uid,
                     grp.getgrnam(group).gr_gid if group else 0)
            os.chmod(path, mode)
        os.chmod(self.queue, 0o755)
        self._write_config()
        r = subprocess.run([POSTFIX_MASTER, "-c", self.etc, "-w"],
                           capture_output=True, text=True)
        assert r.returncode == 0, "postfix master: %s %s\n%s" % (
            r.stdout, r.stderr, self.maillog())
        self.running = True
        return self

    def restart(self, main=None, aliases=None, smtpd=None):
        """Stop, change settings and start again (a reload leaves running
        delivery agents and the queue manager with the old ones for a
        while)."""
        self.stop()
        self.main.update(main or {})
        self.aliases.update(aliases or {})
        self.smtpd.update(smtpd or {})
        return self.start()

    def master_pid(self):
        with open(os.path.join(self.queue, "pid", "master.pid")) as f:
            return int(f.read().split()[0])

    def stop(self):
        if not self.running:
            return
        self.running = False
        try:
            pid = self.master_pid()
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        # the master's children too: their listeners and the queue
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        while time.time() < deadline and subprocess.run(
                ["pgrep", "-f", "-c", self.etc], capture_output=True,
                text=True).stdout.strip() not in ("", "0"):
            time.sleep(0.05)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def maillog(self):
        try:
            with open(self.maillog_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def smtp(self):
        """An SMTP client session to the public smtpd."""
        return smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test",
                            timeout=30)

    def send(self, rcpts, message, mail_from="sender@remote.test",
             rcpt_options=(), mail_options=()):
        """Submit a message; the refused recipients (smtplib's dict)."""
        with self.smtp() as s:
            return s.sendmail(mail_from, rcpts, message,
                              mail_options=list(mail_options),
                              rcpt_options=list(rcpt_options))

    def queue_ids(self):
        """The ids of the messages still in the queue."""
        r = subprocess.run(["postqueue", "-c", self.etc, "-j"],
                           capture_output=True, text=True)
        return re.findall(r'"queue_id": "([0-9A-F]+)"', r.stdout)

    def wait_delivered(self, timeout=30):
        """Until the queue is empty (every message delivered or
        bounced); fails with the log otherwise."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.queue_ids():
                return
            time.sleep(0.1)
        raise AssertionError("postfix %s still has %s queued:\n%s"
                             % (self.name, self.queue_ids(),
                                self.maillog()[-3000:]))

    def deliveries(self):
        """status lines of the log: (recipient, orig_to, relay, status)."""
        out = []
        for m in re.finditer(
                r"to=<([^>]*)>(?:, orig_to=<([^>]*)>)?, relay=([^,]*),.*?"
                r"status=(\w+)", self.maillog()):
            out.append(m.groups())
        return out
