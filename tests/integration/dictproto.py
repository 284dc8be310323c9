"""A client of Dovecot's dict protocol (src/lib-dict/dict-client.h), the
one the mirror-registry service speaks: what any local process could send
to the registry's socket, as any uid, without going through lib-dict."""

import os
import socket


def tabescape(s):
    return (s.replace("\x01", "\x011").replace("\t", "\x01t")
            .replace("\r", "\x01r").replace("\n", "\x01n"))


def tabunescape(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == "\x01" and i + 1 < len(s):
            out.append({"1": "\x01", "t": "\t", "r": "\r",
                        "n": "\n"}.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def exchange(path, requests, uid=None, gid=None, timeout=10):
    """Send the requests (lines without the newline, e.g. "Lshared/x")
    after the handshake, from a child process running as uid/gid when
    given, and return the reply lines."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if gid is not None:
                os.setgroups([])
                os.setgid(gid)
            if uid is not None:
                os.setuid(uid)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(timeout)
            try:
                s.connect(path)
            except OSError as e:
                os.write(w, ("!connect: %s\n" % e.strerror).encode())
                os._exit(0)
            s.sendall(("H3\t2\t0\t\tmirror\n" +
                       "".join(line + "\n" for line in requests)).encode())
            # read every reply before closing: the service finishes what
            # a client that went away asked, but doesn't reply
            f = s.makefile("rb")
            for req in requests:
                if req[:1] in ("L", "C", "D"):
                    os.write(w, f.readline())
                elif req[:1] == "I":
                    while True:
                        line = f.readline()
                        os.write(w, line)
                        if line in (b"\n", b"") or line.startswith(b"F"):
                            break
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode().split("\n")[:-1]
