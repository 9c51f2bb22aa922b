"""A directory whose filesystem can be made full, then freed again (disk-full tests).

Where this process may mount one (root), the directory is a real 16 MiB tmpfs: ``fill()``
writes a filler file until ``ENOSPC`` and ``free()`` deletes it. Elsewhere it is a plain
directory under a file size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored): ``fill()``
caps the size of every file of this process at that of the largest file in the
directory, so the writes that would grow the store past it fail in the kernel with
``EFBIG``, as a full disk fails them with ``ENOSPC``; ``free()`` lifts the cap.
Either way the failures are real system-call failures, not a mock. ``VTPU_SMALLFS=fsize``
forces the second kind.
"""
from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess

SIZE = "16m"


class SmallFS:
    """Context manager: ``.path`` is the directory, ``.kind`` "tmpfs" or "fsize"."""

    def __init__(self, base: str | os.PathLike):
        self.path = os.path.join(os.fspath(base), "smallfs")
        self.kind = ""
        self._filler = os.path.join(self.path, "filler")
        self._limit = None
        self._sigxfsz = None

    def __enter__(self) -> "SmallFS":
        os.makedirs(self.path, exist_ok=True)
        mount = os.geteuid() == 0 and os.environ.get("VTPU_SMALLFS") != "fsize"
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", self.path],
                           capture_output=True, timeout=30) if mount else None
        self.kind = "tmpfs" if r is not None and r.returncode == 0 else "fsize"
        return self

    def fill(self) -> None:
        """Make every further growth of a file in ``path`` fail."""
        if self.kind == "tmpfs":
            fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                for chunk in (1 << 20, 4096, 1):
                    while True:
                        try:
                            os.write(fd, b"\0" * chunk)
                        except OSError as exc:
                            if exc.errno != errno.ENOSPC:
                                raise
                            break
            finally:
                os.close(fd)
        else:
            largest = max((os.path.getsize(os.path.join(root, n))
                           for root, _, files in os.walk(self.path) for n in files), default=0)
            self._sigxfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            self._limit = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (largest, self._limit[1]))

    def free(self) -> None:
        """Give the space back."""
        if self.kind == "tmpfs":
            if os.path.exists(self._filler):
                os.remove(self._filler)
        elif self._limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, self._limit)
            signal.signal(signal.SIGXFSZ, self._sigxfsz)
            self._limit = None

    def __exit__(self, *exc) -> None:
        self.free()
        if self.kind == "tmpfs":
            r = subprocess.run(["umount", self.path], capture_output=True, timeout=30)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", self.path], capture_output=True, timeout=30)
