# cython: language_level=3
"""The server connection's per-read loop, compiled: bytes in, replies out.

:class:`ConnectionLoop` is the base class of the server's connection protocol
(``vtpu.server._Connection``). It keeps the state a read touches as C fields and runs
what every read does: feed the frame decoder, answer the complete requests buffered
(a run of plain GETs or PUTs with one engine call and one encoder call, any other
request through ``server.handle``), and write the replies, or hold them for the group
commit. The rest of the connection (accepting it, flow control, timeouts, the input
budget, pushes, closing) is Python in the subclass, and the loop calls it by name
where it needs it: ``_yield``, ``_stream_failed``, ``check_output``,
``_close_after_flush``.

The server loop is a hot path like the core's: it has no pure-Python twin, and the
server does not start without it. The semantics are the server module's (see
``_Connection``); this only removes the interpreter from the per-read path.
"""
cimport cython

import numpy as np

from vtpu.errors import CoordinateError, InterfaceError, ProtocolError
from vtpu.wire import (KEY_SIZE, RequestError, encode_error, encode_get_replies,
                       encode_responses)

# Work done per read before yielding to the loop, so one client pipelining thousands of
# requests cannot starve the others: at most SLICE_UNITS, where a request handled on its
# own costs REQUEST_UNITS and each request of a run of plain GETs or PUTs costs one (a
# run is one engine call and one encoder call, about an eighth of the cost per request).
# So a slice is 128 requests of any kind, or a run of up to 1024 GETs or PUTs.
SLICE_UNITS = 1024
REQUEST_UNITS = 8
# A frame at least this large is budgeted against Limits.input_total while it arrives;
# smaller ones (every HELLO, nearly every request) never wait for the budget.
LARGE_FRAME = 1024 * 1024
cdef Py_ssize_t _SLICE_UNITS = SLICE_UNITS, _REQUEST_UNITS = REQUEST_UNITS
cdef Py_ssize_t _LARGE_FRAME = LARGE_FRAME


cdef class ConnectionLoop:
    """The fields and the per-read methods of one server connection.

    Every field is public: the Python subclass sets them in its ``__init__`` and reads
    them as plain attributes.
    """
    # What the loop reads and writes on every call (see vtpu.server._Connection).
    cdef public object server       # the _Server
    cdef public object transport
    cdef public object decoder      # the codec's FrameDecoder
    cdef public object clock        # the loop's time(): seconds
    cdef public object backlog      # (msgids, keys) of a GET run not answered yet, or None
    cdef public object job          # a request in steps running for this connection
    # The engine's methods a run of GETs or PUTs calls.
    cdef public object engine_get, engine_get_many, engine_put, content_lengths
    cdef public list pending        # replies held for the group commit
    cdef public bint closing, authed
    cdef public bint durable        # the server's engine has storage (group commits)
    cdef public bint read_paused, write_paused, input_wait
    cdef public Py_ssize_t out_limit, reserved
    cdef public Py_ssize_t slice_bytes   # the server's Limits.slice_bytes
    cdef public double last_rx, partial_since, slice_end

    def data_received(self, data):
        """Feed what arrived to the decoder, then answer the complete requests buffered
        (see :meth:`_process`)."""
        if self.closing:
            return
        self.last_rx = self.clock()
        self.decoder.feed(data)
        if self.read_paused or self.write_paused:
            return  # _continue / resume_writing answers it
        self._process()

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cpdef _process(self):
        """Answer buffered requests: at most ``SLICE_UNITS`` of work and about
        ``slice_bytes`` of replies, then let the loop's other callbacks run first."""
        cdef object server = self.server
        cdef object dec = self.decoder
        cdef object take = dec.next_requests
        cdef Py_ssize_t budget = self.slice_bytes
        cdef Py_ssize_t units = _SLICE_UNITS
        cdef Py_ssize_t size = 0, used = 0, left
        cdef list out = []
        cdef bint wrote = False, more = False
        cdef object item, frame, w
        self.slice_end = 0.0  # a request in steps of this read starts the clock (_Job)
        try:
            if self.backlog is not None:
                msgids, keys = self.backlog
                used = len(msgids)
                frame, self.backlog = self._get_run(msgids, keys, budget)
                out.append(frame)
                size = len(frame)
            while self.backlog is None:
                if used >= units or size >= budget:
                    more = True
                    break
                try:
                    item = take(units - used)
                except RequestError as exc:
                    # The frame boundary is intact: a bad request, the connection survives.
                    used += _REQUEST_UNITS
                    out.append(encode_error(exc.msgid, exc.code, str(exc), self.out_limit))
                    continue
                if item is None:
                    break
                if len(<tuple>item) == 4:
                    # A run of plain GETs or PUTs: one engine call, one encoder call.
                    op, msgids, keys, contents = <tuple>item
                    used += len(msgids)
                    if contents is None:
                        frame, self.backlog = self._get_run(msgids, keys, budget - size)
                        out.append(frame)
                        size += len(frame)
                        continue
                    frame, w = self._put_run(msgids, keys, contents)
                else:
                    used += _REQUEST_UNITS
                    frame, w = server.handle(self, (<tuple>item)[0], (<tuple>item)[1],
                                             (<tuple>item)[2])
                    if frame is None:
                        # A request in steps goes on from the loop: it answers, then
                        # resumes this connection (_Job).
                        wrote = wrote or w
                        break
                out.append(frame)
                size += len(frame)
                wrote = wrote or w
                if self.closing:
                    break
        except Exception as exc:
            # Outside any one request's handling (a stream that can no longer be trusted,
            # a bug): the subclass says why and marks the connection closing.
            out.append(self._stream_failed(exc))
        self._send(out, wrote)
        if self.closing:
            return
        left = dec.buffered()
        if left or self.reserved or self.input_wait:
            head = dec.head_size()
            if head >= _LARGE_FRAME or self.reserved or self.input_wait:
                # (Nothing to change otherwise: no call on a read of small frames.)
                server.reserve_input(self, head if head >= _LARGE_FRAME else 0)
        if self.job is not None:
            return
        if self.backlog is not None or (more and left):
            self.partial_since = 0.0  # complete requests wait: not the client's doing
            self._yield()
        elif not left:
            self.partial_since = 0.0
        elif used or not self.partial_since:
            self.partial_since = self.last_rx  # a frame has begun; the rest must follow

    cdef tuple _get_run(self, list msgids, bytes keys, Py_ssize_t budget):
        """Answer a run of plain GET requests: ``keys`` holds their N 18-byte keys.

        One engine call (``get`` for one key, ``get_many`` for more) and one encoder
        call that stops once about ``budget`` bytes of replies are made; a reply that
        does not fit the client's frame limit is answered alone, with a LIMIT error, and
        the others as usual.

        :returns: ``(reply frames, rest)``: the frames of the first requests, and
            ``(msgids, keys)`` of those not answered yet, or ``None``.
        """
        cdef Py_ssize_t n, cut, i, k = KEY_SIZE, size = 0
        cdef list out
        if budget < 1:
            budget = 1
        if self.authed:
            try:
                if len(msgids) == 1:
                    # (encode_get_replies answers at least one request.)
                    return encode_get_replies(msgids, [self.engine_get(keys)],
                                              self.out_limit, budget)[0], None
                # Read only as many scrolls as this slice may answer: the rest of the
                # run waits in the connection's buffer, not in memory here.
                sizes = np.maximum(self.content_lengths(keys), 64) + 64
                n = max(1, int(np.searchsorted(np.cumsum(sizes), budget, "right")))
                if n < len(msgids):
                    cut = n * k
                    frames, more = self._get_run(msgids[:n], keys[:cut], budget)
                    if more is None:
                        return frames, (msgids[n:], keys[cut:])
                    return frames, (more[0] + msgids[n:], more[1] + keys[cut:])
                frames, n = encode_get_replies(msgids, self.engine_get_many(keys),
                                               self.out_limit, budget)
                if n == len(msgids):
                    return frames, None
                return frames, (msgids[n:], keys[n * k:])
            except Exception:
                pass  # answered one by one below, each with its own error
        out = []
        handle = self.server.handle
        for i in range(len(msgids)):
            frame = handle(self, msgids[i], "GET", [keys[i * k:(i + 1) * k]])[0]
            out.append(frame)
            size += len(frame)
            if size >= budget:
                return b"".join(out), (None if i + 1 >= len(msgids) else
                                       (msgids[i + 1:], keys[(i + 1) * k:]))
        return b"".join(out), None

    cdef tuple _put_run(self, list msgids, bytes keys, list contents):
        # A run of plain PUT requests ([key, content], no if_version): one engine call
        # (put for one key, put_many for more: the same versions as one put after the
        # other) and one encoder call. If the batch is refused for an argument (a
        # content the engine cannot store, an unknown name id), nothing was written and
        # each PUT is executed on its own, so each request gets its own answer.
        # Returns (the N reply frames, whether anything may have been written).
        server = self.server
        if not self.authed:
            return server._each_put(self, msgids, keys, contents), False
        try:
            if len(msgids) == 1:
                versions = [self.engine_put(keys, contents[0])]
            else:
                versions = server.dispatch.put_many([keys, contents])
        except (InterfaceError, CoordinateError):
            return server._each_put(self, msgids, keys, contents), True
        except Exception as exc:
            return server._errors(self, "PUT", msgids, exc), True
        if server.trackers:
            server.note_write("PUT_MANY", [keys], self)
        return encode_responses(msgids, versions, self.out_limit), True

    cpdef _send(self, list out, bint wrote):
        """Write the replies of one slice now, or hold them for the group commit at the
        end of this loop iteration (reads too, once a write is uncommitted: they may
        show it)."""
        server = self.server
        if not out:
            if self.closing:
                self._close_after_flush()
            return
        if self.pending or (self.durable and (wrote or server._dirty)):
            self.pending.extend(out)
            server.schedule_flush(self)
        else:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
            if self.write_paused:
                self.check_output()
            if self.closing:
                self._close_after_flush()
