"""Loopback ports for the tests' servers and peers.

Listening ports come from below the kernel's ephemeral range (32768-60999
by default), so that no connection made meanwhile takes a port between the
moment it is chosen and the moment a server binds it. A test run may be
given a range of its own (MIRROR_TEST_PORTS=LOW-HIGH, so that two runs at
once never meet); each pytest-xdist worker takes its own slice of it, and
passes that slice on to scripts/sandbox (MIRROR_PORT_RANGE).
"""

import os
import random
import socket

DEFAULT_RANGE = (20000, 32000)
# the most workers a run may have (pytest -n)
SLICES = 8


def _parse(value):
    low, high = (int(p) for p in value.split("-", 1))
    if not 1024 <= low < high <= 65535:
        raise ValueError("bad port range %r" % value)
    return low, high


def worker_range():
    """This process's slice of the run's range."""
    low, high = _parse(os.environ["MIRROR_TEST_PORTS"]) \
        if os.environ.get("MIRROR_TEST_PORTS") else DEFAULT_RANGE
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker[2:]) % SLICES if worker[2:].isdigit() else 0
    size = (high - low + 1) // SLICES
    return low + n * size, low + (n + 1) * size - 1


def free_port(port_range=None):
    """A port that is free on 127.0.0.1 right now."""
    low, high = port_range or worker_range()
    while True:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", random.randint(low, high)))
            except OSError:
                continue
            return s.getsockname()[1]
