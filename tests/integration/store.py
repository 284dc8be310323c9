"""A real redis-server on a loopback port: the shared store of the
two-server tests (and of `scripts/bench --store redis`). It keeps an append-only file (fsync always), so that a
stop and a start on the same directory lose nothing, as a production
Redis with persistence wouldn't."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

from ports import free_port




REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_command(port, *args):
    """One command in RESP to the redis-server on a loopback port; a
    simple reply, an integer, a bulk string (None when missing) or a list
    of bulk strings."""
    req = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(req)
        return _redis_reply(s.makefile("rb"))


def _redis_reply(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise AssertionError("redis: " + rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if int(rest) < 0:
            return None
        data = f.read(int(rest) + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        return [_redis_reply(f) for _ in range(int(rest))]
    raise AssertionError("redis: unexpected reply %r" % line)


def redis_store(uri):
    """(port, prefix) of a redis: dict URI that uri() made."""
    params = dict(p.split("=", 1) for p in uri.split(":")[1:] if "=" in p)
    return int(params["port"]), params.get("prefix", "")


class RedisServer:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mirror-redis-")
        self.port = free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", self.dir, "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--daemonize", "no",
             "--logfile", os.path.join(self.dir, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while True:
            try:
                if self.command("PING") == "PONG":
                    return self
            except OSError:
                pass
            except AssertionError as e:
                # up, still reading its append-only file
                if "LOADING" not in str(e):
                    raise
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError("redis-server did not start: %s"
                                     % self.log())
            time.sleep(0.05)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def log(self):
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def uri(self, prefix):
        """The Dovecot dict URI of a namespace of this server (no colons
        in prefix: they separate the URI's parameters)."""
        return "redis:host=127.0.0.1:port=%d:prefix=%s" % (self.port, prefix)

    def command(self, *args):
        return redis_command(self.port, *args)

    def keys(self, prefix):
        return sorted(self.command("KEYS", prefix + "*"))

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
