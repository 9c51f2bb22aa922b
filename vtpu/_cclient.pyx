# cython: language_level=3
"""The sync client's single call, compiled: one request, one reply, on a blocking socket.

:class:`SingleCalls` is the base class of :class:`vtpu.netclient.RemoteEngine`. It holds
the connection state every call reads (the lock, the socket and its descriptor, the
fork generation, the last I/O time, the range in which the socket's timeout is kept) as
C fields, and runs ``get``, ``put`` and their shared round trip with no Python frame of
its own: check the connection, encode (the session's), send and read (the session's
receive buffer, one C call), read the reply (the session's). Connecting, the idle check,
setting timeouts, retrying and closing are Python methods of the subclass, called by
name when a call needs them (``_ensure``, ``_set_timeout``, ``_send_rest``, ``_retry``,
``_drop``).

Like the server's loop it has no pure-Python twin: it is the netclient's own code, moved.
"""
cimport cython

from vtpu import errors as E
from vtpu.session import as_key, reply_value

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC

# A connection idle for longer than this is checked for a peer close before it is used,
# so a server restart costs a reconnect rather than a failed non-idempotent write.
IDLE_CHECK_SECONDS = 1.0
cdef double _IDLE = IDLE_CHECK_SECONDS
# A single call's request up to this size is sent whole by one system call (the socket's
# send buffer takes it), so one timeout bounds it.
SMALL_FRAME = 16 * 1024
cdef Py_ssize_t _SMALL = SMALL_FRAME

cdef object _VTPUError = E.VTPUError
cdef object _ConnectionError = E.ConnectionError
cdef object _translate = E.translate_socket_error


cdef inline double _now() noexcept nogil:
    # time.monotonic(), read in C (the same clock).
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class SingleCalls:
    """The fields and the single-call methods of a sync network client.

    Every field is public: the Python subclass sets and reads them as attributes.
    """
    cdef public object _lock      # threading.Lock: one exchange at a time
    cdef public object _sock      # the socket, or None
    cdef public int _fd           # its descriptor when the kernel enforces timeouts, or -1
    cdef public object _gen       # the fork generation the socket belongs to
    cdef public object _fork_gen  # [the process's fork generation]
    cdef public double _last_io   # monotonic time of the last call's start
    # The time left in a call for which the socket's timeout is kept as it is (see
    # RemoteEngine._set_timeout); an empty range until one is set.
    cdef public double _keep_lo, _keep_hi
    cdef public object session    # the vtpu.session.Session
    cdef public object timeout    # the default per-call timeout in seconds, or None

    def __cinit__(self):
        self._fd = -1
        self._keep_lo = float("inf")
        self._keep_hi = 0.0

    def get(self, key, *, timeout=None):
        """Read one scroll (see :meth:`vtpu.session.ClientOps.get`)."""
        if type(key) is not bytes or len(<bytes>key) != 18:
            key = as_key(key)
        t = self.timeout if timeout is None else timeout
        deadline = None if t is None else _now() + t
        s = self.session
        try:
            r = self._call(s.encode_get, s.read_get_reply, key, deadline)
        except _VTPUError as exc:
            r = self._retry(exc, self._roundtrip, (s.encode_get, s.read_get_reply, key), True,
                            deadline)
        return r[1] if r[0] else reply_value(r)

    def put(self, key, content, if_version=None, *, timeout=None):
        """Write one scroll (see :meth:`vtpu.session.ClientOps.put`)."""
        if type(key) is not bytes or len(<bytes>key) != 18:
            key = as_key(key)
        args = [key, content] if if_version is None else [key, content, if_version]
        t = self.timeout if timeout is None else timeout
        # A PUT is never retried: it may have been applied before the connection broke.
        s = self.session
        r = self._call(s.encode_put, s.read_reply, args, None if t is None else _now() + t)
        return r[1] if r[0] else reply_value(r)

    def _roundtrip(self, encode, read, arg, deadline):
        """One request outside any exchange (the hot GET/PUT): encode under the lock,
        send, read its reply with ``read(msgid)`` (a session reader returning None until
        the reply is in). Closes the socket on any failure.

        :returns: ``(True, value)`` or ``(False, (code, message))``.
        """
        return self._call(encode, read, arg, deadline)

    cdef tuple _call(self, encode, read, arg, deadline):
        cdef double now
        cdef Py_ssize_t n
        lock = self._lock
        lock.acquire()
        try:
            # One clock read serves the idle check, the timeout and the idle mark (the
            # call's start: a long call only makes the next idle check come sooner).
            now = _now()
            sock = self._sock
            if (sock is None or self._gen != self._fork_gen[0]
                    or now - self._last_io > _IDLE):
                sock = self._ensure()
            m, frame = encode(arg)
            try:
                if deadline is None or not self._keep_lo <= deadline - now <= self._keep_hi:
                    self._set_timeout(deadline, now)
                rx = self.session.rx
                if len(<bytes>frame) <= _SMALL:
                    # (Sent whole at once by the kernel: no deadline to apply between
                    # partial sends.)
                    n = rx.send_recv(sock, self._fd, frame)
                else:
                    n = sock.send(frame)
                    if n < len(<bytes>frame):
                        self._send_rest(frame, n, deadline)
                    n = rx.recv(sock)
                while True:
                    if not n:
                        raise _ConnectionError(
                            f"server {self.host}:{self.port} closed the connection")
                    r = read(m)
                    if r is not None:
                        break
                    self._set_timeout(deadline)
                    n = rx.recv(sock)
            except BaseException as exc:
                # Whatever happened, the stream may hold half a reply: never reuse it.
                self._drop()
                if isinstance(exc, OSError) and not isinstance(exc, _VTPUError):
                    raise _translate(exc, self._where("call to")) from exc
                raise
            self._last_io = now
            return r
        finally:
            lock.release()
