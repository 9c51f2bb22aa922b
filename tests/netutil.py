"""Helpers of the TLS and protected-mode tests.

:func:`make_certs` makes certificates at test time with the ``openssl`` binary (no
extra Python dependency; the binary is on every machine that has the ``ssl`` module's
library, and a test that needs it skips loudly without it): a CA, a server certificate
it signs for ``localhost`` and ``127.0.0.1``, a client certificate it signs, and a
second, unrelated CA. :class:`ServeProcess` runs ``python -m vtpu serve`` on port 0.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: str) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=60)
    if r.returncode:
        raise AssertionError(f"openssl {' '.join(args)} failed: {r.stderr}")


def _ca(d: str, name: str) -> None:
    _openssl("req", "-x509", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-days", "2", "-subj", f"/CN=vtpu test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _leaf(d: str, name: str, ca: str, ext: str) -> None:
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + ext)
    _openssl("req", "-new", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-set_serial", str(secrets.randbits(63)), "-days", "2",
             "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)


def make_certs(d: str) -> SimpleNamespace:
    """Make the test PKI in directory ``d``.

    :returns: paths: ``ca``, ``server_cert``, ``server_key``, ``client_cert``,
        ``client_key``, ``other_ca``.
    """
    if shutil.which("openssl") is None:
        pytest.skip("the openssl binary is needed to make test certificates")
    _ca(d, "ca")
    _ca(d, "other")
    _leaf(d, "server", "ca", "extendedKeyUsage=serverAuth\n"
                             "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    p = lambda n: os.path.join(d, n)  # noqa: E731
    return SimpleNamespace(ca=p("ca.pem"), other_ca=p("other.pem"),
                           server_cert=p("server.pem"), server_key=p("server.key"),
                           client_cert=p("client.pem"), client_key=p("client.key"))


class StartFailed(Exception):
    """``vtpu serve`` exited before it listened."""

    def __init__(self, returncode: int, log: str):
        super().__init__(f"exit {returncode}: {log}")
        self.returncode = returncode
        self.log = log


class ServeProcess:
    """``python -m vtpu serve --port 0 ARGS`` with its stderr in ``log_path``.

    :param args: more arguments (``--host`` defaults to the server's own default).
    :param tmp: a directory for the log.
    :param env: extra environment variables.
    """

    def __init__(self, args: list, tmp: str, env: dict | None = None):
        self.args = list(args)
        self.log_path = os.path.join(tmp, f"serve-{time.monotonic_ns()}.log")
        self.env = dict(os.environ)
        self.env.pop("VTPU_TOKEN", None)
        self.env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def log(self) -> str:
        """What the server wrote to stderr so far."""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def start(self, timeout: float = 30.0) -> "ServeProcess":
        """Start it and wait for the ``serving on HOST:PORT`` line.

        :raises StartFailed: it exited first.
        """
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vtpu", "serve", "--port", "0", *self.args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                env=self.env, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"serving on \S+:(\d+)", self.log())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                raise StartFailed(self.proc.returncode, self.log())
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"vtpu serve did not start: {self.log()}")

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 20 s); returns the exit status."""
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(20)
        return p.returncode

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
