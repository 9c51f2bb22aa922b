# cython: language_level=3
"""The client's single call, compiled: one request, one reply.

:class:`SessionCore` is the base class of :class:`vtpu.session.Session`: the message
ids, and encoding one request and reading its reply from the receive buffer.
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

import time

from vtpu import errors as E
from vtpu import wire as codec

cdef object _session = None


cdef object _session_module():
    # vtpu.session imports this module for its base class: the names this module needs
    # from it (conversions and decoders on the cold paths) are looked up after import.
    global _session
    if _session is None:
        import vtpu.session
        _session = vtpu.session
    return _session

# A connection idle for longer than this is checked for a peer close before it is used,
# so a server restart costs a reconnect rather than a failed non-idempotent write.
IDLE_CHECK_SECONDS = 1.0
cdef double _IDLE = IDLE_CHECK_SECONDS
# A single call's request up to this size is sent whole by one system call (the socket's
# send buffer takes it), so one timeout bounds it.
SMALL_FRAME = 16 * 1024
cdef Py_ssize_t _SMALL = SMALL_FRAME

# The codec's functions, as vtpu.wire picked them at import (no module lookup per call).
cdef object _encode_request = codec.encode_request
cdef object _encode_get_requests = codec.encode_get_requests
cdef object _unpackb = codec.unpackb
cdef object _parse_reply = codec.parse_reply

cdef object _VTPUError = E.VTPUError
cdef object _ConnectionError = E.ConnectionError
cdef object _translate = E.translate_socket_error


# The clock of every deadline and idle mark, the Python side's too (time.monotonic: the
# same clock on every platform, which no C call is).
cdef object _now = time.monotonic


cdef unsigned long long _MAX_ID = 0xFFFFFFFF


cdef class SessionCore:
    """The single-call part of :class:`vtpu.session.Session` (its base class): the
    message-id counter, and encoding one request and reading its reply from the
    session's receive buffer. Everything else of the session (exchanges, pipelines,
    pushes, RANGE pages) is Python in the subclass; :meth:`read_reply` hands a frame
    that is not the reply it waits for to the subclass's ``_other``.

    Every field is public: the subclass sets and reads them as attributes.
    """
    cdef public object names             # the client's NameTable cache
    cdef public object rx                # the codec's ReplyBuffer
    cdef public Py_ssize_t max_frame_size
    cdef public unsigned long long msgid  # the last id taken

    # -- message ids ------------------------------------------------------------------------

    cdef inline unsigned long long _next(self):
        cdef unsigned long long m = self.msgid + 1
        if m > _MAX_ID:
            m = 1
        self.msgid = m
        return m

    def next_id(self):
        """Take the next message id (1 .. 2**32-1, then 1 again)."""
        return self._next()

    def _take_ids(self, unsigned long long n):
        # n consecutive ids; restart at 1 rather than wrap inside one write, so a reply's
        # place in its exchange is always msgid - first.
        cdef unsigned long long first = self.msgid + 1
        if first + n - 1 > _MAX_ID:
            first = 1
        self.msgid = first + n - 1
        return first

    # -- requests ---------------------------------------------------------------------------

    cpdef encode(self, op, args):
        """Encode one request outside any exchange (the caller reads its reply with
        :meth:`read_reply`).

        :returns: ``(msgid, frame)``.
        :raises LimitError: the frame would exceed ``max_frame_size`` (nothing is sent).
        :raises InterfaceError: an argument msgpack cannot encode.
        """
        m = self._next()
        return m, _encode_request(m, op, args, self.max_frame_size)

    cpdef tuple encode_put(self, args):
        """Encode one PUT of ``[key, content(, if_version)]``: ``(msgid, frame)``.

        :raises LimitError: the frame would exceed ``max_frame_size``.
        """
        m = self._next()
        return m, _encode_request(m, "PUT", args, self.max_frame_size)

    cpdef tuple encode_get(self, key):
        """Encode one GET of an 18-byte key: ``(msgid, frame)``."""
        m = self._next()
        return m, _encode_get_requests(m, key, self.max_frame_size)

    # -- replies: one call outside any exchange -----------------------------------------------

    cpdef read_reply(self, msgid):
        """The reply to a request made with :meth:`encode`/:meth:`encode_put`, from the
        buffered bytes: ``(True, value)``, ``(False, (code, message))``, or None when it
        has not fully arrived. Pushes before it are delivered. For a client with one
        request in flight (the sync client's single calls); with exchanges pending, use
        ``receive``.

        :raises ProtocolError: a malformed frame, or a reply no request waits for.
        :raises ServerError: a connection-level error (msgid 0).
        """
        rx = self.rx
        while True:
            r = rx.take_reply(msgid)   # (the common case: its success, read in C)
            if r is not None:
                return r
            body = rx.next_body()
            if body is None:
                return None
            msg = _unpackb(body)
            if type(msg) is list and len(<list>msg) == 3 and msg[0] == msgid:
                if msg[1] == 0:
                    return True, msg[2]
                return False, _parse_reply(msg).value
            self._other(msg)

    cpdef read_get_reply(self, msgid):
        """The reply to a GET made with :meth:`encode_get`: ``(True, Scroll or None)``,
        ``(False, (code, message))``, or None when it has not fully arrived. The reply is
        read by the compiled GET-reply reader a pipeline's GETs use; anything else (a
        push before it, an error, another encoding) as :meth:`read_reply` reads it.

        :raises ProtocolError: a malformed frame or scroll, or a reply no request waits
            for.
        :raises ServerError: a connection-level error (msgid 0).
        """
        got = self.rx.take_get_replies(msgid, 1, self.names)
        if got:
            return True, got[0]
        r = self.read_reply(msgid)
        if r is None or not r[0]:
            return r
        return True, _session_module().decode_scroll(self, None, r[1])


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
    cdef public SessionCore session  # the vtpu.session.Session
    cdef public object timeout    # the default per-call timeout in seconds, or None

    def __cinit__(self):
        self._fd = -1
        self._keep_lo = float("inf")
        self._keep_hi = 0.0

    def get(self, key, *, timeout=None):
        """Read one scroll (see :meth:`vtpu.session.ClientOps.get`)."""
        if type(key) is not bytes or len(<bytes>key) != 18:
            key = _session_module().as_key(key)
        t = self.timeout if timeout is None else timeout
        deadline = None if t is None else _now() + t
        try:
            r = self._call(True, key, deadline)
        except _VTPUError as exc:
            r = self._retry(exc, self._roundtrip, (True, key), True, deadline)
        return r[1] if r[0] else _session_module().reply_value(r)

    def put(self, key, content, if_version=None, *, timeout=None):
        """Write one scroll (see :meth:`vtpu.session.ClientOps.put`)."""
        if type(key) is not bytes or len(<bytes>key) != 18:
            key = _session_module().as_key(key)
        args = [key, content] if if_version is None else [key, content, if_version]
        t = self.timeout if timeout is None else timeout
        # A PUT is never retried: it may have been applied before the connection broke.
        r = self._call(False, args, None if t is None else _now() + t)
        return r[1] if r[0] else _session_module().reply_value(r)

    def _roundtrip(self, bint get, arg, deadline):
        """One request outside any exchange (the hot GET/PUT): encode under the lock
        (the session's ``encode_get(key)`` if ``get``, else ``encode_put(args)``), send,
        read its reply (``read_get_reply`` or ``read_reply``: None until it is in).
        Closes the socket on any failure.

        :returns: ``(True, value)`` or ``(False, (code, message))``.
        """
        return self._call(get, arg, deadline)

    cdef tuple _call(self, bint get, arg, deadline):
        cdef double now
        cdef Py_ssize_t n
        cdef SessionCore s = self.session
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
            m, frame = s.encode_get(arg) if get else s.encode_put(arg)
            try:
                if deadline is None or not self._keep_lo <= deadline - now <= self._keep_hi:
                    self._set_timeout(deadline, now)
                rx = s.rx
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
                    r = s.read_get_reply(m) if get else s.read_reply(m)
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
