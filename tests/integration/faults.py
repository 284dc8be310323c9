"""Fault points of test builds (lib-registry/fault-point.h): a test arms
one, and the process that reaches it kills itself with SIGKILL there."""

import os
import shutil
import tempfile

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def bag_executable():
    """The bag service the sandbox runs (scripts/sandbox's rules)."""
    libexec = os.environ.get("MIRROR_LIBEXECDIR")
    if not libexec:
        try:
            with open(os.path.join(TOP, "scripts", "sandbox.env")) as f:
                for line in f:
                    if line.startswith("MIRROR_LIBEXECDIR="):
                        libexec = line.strip().split("=", 1)[1]
        except OSError:
            pass
    return os.path.join(libexec or "/usr/lib/dovecot", "bag")


def fault_points_built():
    """Whether the suite was built with --enable-fault-points (every part
    of a build has them or none has)."""
    try:
        with open(bag_executable(), "rb") as f:
            return b"Fault point" in f.read()
    except OSError:
        return False


needs_fault_points = pytest.mark.skipif(
    not fault_points_built(),
    reason="needs a build with --enable-fault-points (scripts/test-all)")


class Faults:
    """A directory Dovecot's processes may read and empty: MIRROR_FAULT_AT
    names the file in it that arms one fault point."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mirror-faults-")
        os.chmod(self.dir, 0o777)
        self.path = os.path.join(self.dir, "point")

    @property
    def config(self):
        return "import_environment = $import_environment " \
            "MIRROR_FAULT_AT=%s\n" % self.path

    def arm(self, name, nth=1):
        with open(self.path, "w") as f:
            f.write("%s:%d\n" % (name, nth))
        os.chmod(self.path, 0o666)

    def disarm(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    @property
    def fired(self):
        return not os.path.exists(self.path)

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

