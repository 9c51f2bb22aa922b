"""The client session: one sans-IO state machine behind every vtpu network client.

A :class:`Session` turns calls into request bytes and received bytes into results. It
never touches a socket: the sync client (:mod:`vtpu.netclient`) and the asyncio client
(:mod:`vtpu.aio`) only move bytes between their transport and the session
(:meth:`Session.data_to_send`, :meth:`Session.get_buffer` /
:meth:`Session.buffer_updated`, the same pair as :class:`asyncio.BufferedProtocol`).

What the session owns
    * **Message ids**: 1 .. 2**32-1, wrapping to 1; the ids of one write are consecutive.
    * **Reply matching**: every write of one or more requests is an :class:`Exchange`;
      replies are matched to it by msgid (PROTOCOL.md §3: the server answers in order,
      the in-order case costs nothing extra; a reply to a request further back is
      matched as well; a reply no request is waiting for is a
      :class:`~vtpu.errors.ProtocolError`). An error with msgid 0, or a refused HELLO,
      is a connection-level error: it is raised from :meth:`Session.receive`, and the
      client fails every pending exchange with it (:meth:`Session.fail`).
    * **Name learning**: the client's :class:`~vtpu.coords.NameTable` cache is loaded by
      the NAMES request sent with HELLO and learns the ids that INTERN returns.
    * **Pushes**: ``[0, "push", kind, payload]`` frames go to :attr:`Session.on_push`;
      a callback that raises is logged (logger ``vtpu.client``) and reading goes on.
    * **RANGE continuation**: a RANGE page that says where to continue makes the session
      queue the request for the next page itself (one more :meth:`data_to_send`); the
      exchange completes when the last page is in.
    * **Pipeline assembly**: many calls, one write (GET runs encoded and their replies
      decoded by the compiled codec), results in order, errors kept as values until
      :func:`finish` raises the first one after everything was read.

The Engine-shaped request methods (:class:`ClientOps`) are written once here, over an
abstract ``_submit``: the sync client runs a call at once, a pipeline queues it, the
asyncio client returns a coroutine.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable

import numpy as np

from vtpu import _core
from vtpu import errors as E
from vtpu.coords import NAME_BASE, NameTable, Scroll
# The engine's own argument checks: a client refuses exactly what the engine refuses,
# before anything is sent (the wire form cannot say that a pattern was float64).
from vtpu.engine import (MAX_FRONTIER, MAX_HOPS, MAX_K, check_blob, check_contents,
                         check_count, check_deltas, check_direction, check_key,
                         check_metric, check_name_list, check_patterns, check_text,
                         check_values)
from vtpu.results import Scrolls

# -- the wire codec ---------------------------------------------------------------------------
# Every byte a client sends or reads is encoded or decoded through vtpu.wire, and nowhere
# else: the compiled codec when it is built, else its pure-Python reference.
from vtpu import wire as codec  # noqa: E402
from vtpu._cclient import SessionCore  # noqa: E402
# ------------------------------------------------------------------------------------------

__all__ = ["Session", "Exchange", "GetRun", "ClientOps", "finish", "value_of",
           "reply_value", "decode_scroll", "as_key", "as_blob", "idempotent"]

log = logging.getLogger("vtpu.client")

_UNSET = object()    # a result slot whose reply has not been read
KEY_SIZE = codec.KEY_SIZE


def finish(results: list, raise_on_error: bool) -> list:
    """The end of every pipeline: raise the first failed call's exception, or return.

    Every reply has been read before this runs, so the connection is in sync whatever
    it raises.

    :param results: one result per queued call, exception objects for failed calls.
    :param raise_on_error: raise the first exception found (else return them as values).
    :returns: ``results``.
    :raises Exception: the first failed call's exception, when ``raise_on_error``.
    """
    # One pass in C (a pipeline of thousands of calls usually has no failed one).
    if raise_on_error:
        i = _core.first_error(results)
        if i >= 0:
            raise results[i]
    return results


def value_of(result: Any) -> Any:
    """A single call's result, raising it when it is an exception object."""
    if isinstance(result, BaseException):
        raise result
    return result


class Exchange:
    """Requests written together and the replies that answer them.

    :ivar entries: the calls, ``(opcode, args, decode)`` each.
    :ivar results: one slot per call; complete when :attr:`done`. A failed call's slot
        holds its exception object.
    :ivar error: a connection-level failure that ended the exchange (then every
        unanswered slot holds it too).
    :ivar waiter: free for the driver (the asyncio client keeps a future there).
    """

    __slots__ = ("entries", "first", "nwire", "batch", "gets_only", "results", "next",
                 "remaining", "done", "error", "abandoned", "parent", "slot", "waiter")

    def __init__(self, entries: list, first: int, batch: bool, gets_only: bool):
        self.entries = entries
        self.first = first
        self.nwire = 1 if batch else len(entries)
        self.batch = batch
        self.gets_only = gets_only
        self.results = [_UNSET] * len(entries)
        self.next = 0                 # lowest reply frame not read yet
        self.remaining = len(entries)  # calls whose result is not final
        self.done = not entries
        self.error: BaseException | None = None
        self.abandoned = False
        self.parent: Exchange | None = None   # a RANGE continuation's exchange
        self.slot = 0                          # ... and the parent's slot it fills
        self.waiter: Any = None

    def value(self) -> Any:
        """The result of a one-call exchange, raising it if it is an exception."""
        return value_of(self.results[0])


class GetRun:
    """The entries of an exchange of GETs only, held as their keys: entry ``i`` is
    ``("GET", [keys[i]], decode_scroll)``, made when it is looked at.

    A pipeline of thousands of GETs queues one list of keys instead of a tuple and a
    list per call, which the cycle collector would otherwise trace every few hundred
    calls (the entries are looked at one by one only on an error or a retry).

    :param keys: the 18-byte keys, in order.
    """

    __slots__ = ("keys",)

    def __init__(self, keys: list):
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple:
        return ("GET", [self.keys[i]], decode_scroll)

    def __iter__(self):
        for k in self.keys:
            yield ("GET", [k], decode_scroll)


class _Page:
    """A RANGE page that says where the next one starts."""

    __slots__ = ("items", "after")

    def __init__(self, items: Any, after: bytes):
        self.items = items
        self.after = after


class _Pages:
    """The pages of one RANGE call collected so far (the slot's value meanwhile)."""

    __slots__ = ("pages", "got", "limit", "keys_only", "args")

    def __init__(self, args: list):
        self.pages: list = []
        self.got = 0
        self.limit = args[1]
        self.keys_only = bool(args[3])
        self.args = args

    def merged(self) -> Any:
        pages = self.pages
        if self.keys_only:
            return np.concatenate(pages) if len(pages) > 1 else pages[0]
        return Scrolls.concat(pages)


class Session(SessionCore):
    """The sans-IO state of one client: ids, buffers, pending exchanges, names.

    One Session per client object; :meth:`reset` when its connection is replaced (the
    name table is kept: ids never change for a store).

    :param names: the client's name-table cache (default: an empty one).
    :param max_frame_size: the largest frame body sent or accepted.
    :param on_push: ``on_push(kind, payload)`` for server pushes, or None.
    """

    def __init__(self, names: NameTable | None = None,
                 max_frame_size: int = codec.DEFAULT_MAX_FRAME_SIZE,
                 on_push: Callable[[str, Any], None] | None = None):
        self.names = NameTable() if names is None else names
        self.max_frame_size = max_frame_size
        self.on_push = on_push
        self.msgid = 0
        self._inflight: deque[Exchange] = deque()
        self._out: list[bytes] = []
        #: the receive buffer (the codec's :class:`~vtpu.protocol.ReplyBuffer`): a
        #: transport reads into ``rx.get_buffer()`` / ``rx.recv(sock)`` directly
        self.rx = codec.ReplyBuffer(max_frame_size)

    def exchange(self, entries: list, batch: bool = False,
                 gets_only: bool | None = None) -> Exchange:
        """Encode calls as one write; the bytes wait in :meth:`data_to_send`.

        :param entries: ``(opcode, args, decode)`` per call; ``decode(session, args,
            value)`` turns a success value into the result (None: the value itself);
            or a :class:`GetRun`.
        :param batch: send one BATCH frame holding every call instead of one frame each.
        :param gets_only: whether every call is a GET (computed when None).
        :returns: the :class:`Exchange`; it is done when every reply has been read.
        :raises LimitError: a frame would exceed ``max_frame_size`` (nothing is queued).
        """
        run = type(entries) is GetRun
        if gets_only is None:
            gets_only = run or all(e[0] == "GET" for e in entries)
        ex = Exchange(entries, 0, batch, gets_only)
        if not entries:
            return ex
        ex.first = first = self._take_ids(ex.nwire)
        mfs = self.max_frame_size
        if batch:
            frame = codec.encode_request(first, "BATCH", [[[op, a] for op, a, _ in entries]],
                                         mfs)
        elif gets_only:
            keys = entries.keys if run else [a[0] for _, a, _ in entries]
            frame = codec.encode_get_requests(first, b"".join(keys), mfs)
        else:
            frames = []
            m = first
            for op, a, _ in entries:
                if op == "GET":
                    frames.append(codec.encode_get_requests(m, a[0], mfs))
                else:
                    frames.append(codec.encode_request(m, op, a, mfs))
                m += 1
            frame = b"".join(frames)
        self._inflight.append(ex)
        self._out.append(frame)
        return ex

    def handshake(self, token: str | None, track: bool) -> Exchange:
        """Queue HELLO and NAMES in one write: the session opens and the name table is
        loaded in one round trip. A refused HELLO is a connection-level error (raised
        from :meth:`receive`).

        :param token: the server's auth token, or None.
        :param track: ask for invalidation pushes.
        :returns: the exchange; ``results[0]`` is the server's HELLO answer.
        """
        options: dict = {"max_frame_size": self.max_frame_size}
        if track:
            options["track"] = True
        return self.exchange([("HELLO", [codec.PROTOCOL_VERSION, token, options], None),
                              ("NAMES", [], _dec_names)], gets_only=False)

    def data_to_send(self) -> bytes:
        """Take the bytes queued for the transport (b"" if none)."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    # -- the receive buffer -----------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Writable free space of the receive buffer, for ``recv_into`` (or an asyncio
        :class:`~asyncio.BufferedProtocol`); report what was written with
        :meth:`buffer_updated`. (``rx.get_buffer``, for callers holding the session.)"""
        return self.rx.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written into :meth:`get_buffer`'s space."""
        self.rx.buffer_updated(nbytes)

    def feed(self, data: bytes) -> None:
        """Copy received bytes into the buffer (for transports that hand out bytes)."""
        self.rx.feed(data)

    def buffered(self) -> int:
        """How many received bytes are not consumed yet."""
        return self.rx.buffered()

    def reset(self) -> list[Exchange]:
        """Forget the connection: drop buffered bytes, queued requests, and fail pending
        exchanges with :class:`~vtpu.errors.ConnectionError` (the name table stays).

        :returns: the exchanges that were pending (now done, with ``error`` set).
        """
        self.rx.clear()
        self._out = []
        return self.fail(E.ConnectionError("the connection was reset"))

    # -- replies: exchanges -------------------------------------------------------------------

    def receive(self) -> list[Exchange]:
        """Consume every complete frame buffered so far.

        :returns: the exchanges that became done (in completion order).
        :raises ProtocolError: a malformed frame or a reply nobody waits for (the
            connection is unusable).
        :raises ServerError: a connection-level error: msgid 0, or a refused HELLO.
        """
        done: list[Exchange] = []
        inflight = self._inflight
        rx = self.rx
        while rx.buffered() >= 4:
            ex = inflight[0] if inflight else None
            if ex is not None and not ex.batch and ex.entries[ex.next][0] == "GET":
                # The compiled reader takes the run of GET replies it expects next.
                i = ex.next
                if ex.gets_only:
                    j = ex.nwire
                else:
                    j = i + 1
                    entries = ex.entries
                    while j < ex.nwire and entries[j][0] == "GET":
                        j += 1
                got = rx.take_get_replies(ex.first + i, j - i, self.names)
                k = len(got)
                if k:
                    ex.results[i:i + k] = got
                    ex.remaining -= k
                    i += k
                    results = ex.results
                    while i < ex.nwire and results[i] is not _UNSET:
                        i += 1
                    ex.next = i
                    if i == ex.nwire:
                        inflight.popleft()
                    self._check_done(ex, done)
                    continue
            raw = ex is not None and not ex.batch and _reads_raw(ex.entries[ex.next])
            body = rx.next_body()
            if body is None:
                break
            if raw:
                m = ex.first + ex.next
                head = b"\x93" + codec.packb(m) + b"\x00"
                if body[:len(head)] == head:
                    # A scroll list's success (GET_MANY, a RANGE page): the compiled
                    # column reader takes the body.
                    self._settle(ex, ex.next, True, (bytes(body), len(head)), done, True)
                    continue
            msg = codec.unpackb(body)
            if ex is not None and type(msg) is list and len(msg) == 3 \
                    and msg[0] == ex.first + ex.next:
                if msg[1] == 0:
                    self._settle(ex, ex.next, True, msg[2], done)
                else:
                    self._settle(ex, ex.next, False, codec.parse_reply(msg).value, done)
                continue
            self._other(msg, done)
        return done

    def _other(self, msg: Any, done: list | None = None) -> None:
        """A frame that is not the reply expected next: a push, a connection-level
        error, or a reply to a request further back."""
        r = codec.parse_reply(msg)
        if isinstance(r, codec.Push):
            self._push(r.kind, r.payload)
            return
        if r.msgid == 0:
            if not r.ok:
                raise E.error_from_code(r.value[0], r.value[1])
        else:
            for ex in self._inflight:
                i = r.msgid - ex.first
                if 0 <= i < ex.nwire and ex.results[i] is _UNSET and not ex.batch:
                    self._settle(ex, i, r.ok, r.value, [] if done is None else done)
                    return
        raise E.ProtocolError(f"reply id {r.msgid} matches no request in flight")

    def _push(self, kind: str, payload: Any) -> None:
        cb = self.on_push
        if cb is not None:
            try:
                cb(kind, payload)
            except Exception:
                # A faulty callback must not desynchronise the connection.
                log.exception("on_push callback failed for a %r push", kind)

    def _settle(self, ex: Exchange, i: int, ok: bool, value: Any, done: list,
                raw: bool = False) -> None:
        """Reply frame ``i`` of ``ex`` was read: resolve its call(s), move ``ex.next``
        past the frames read, retire the exchange when all are in."""
        if ex.batch:
            for j, (iok, ival) in enumerate(self._batch_items(ex, ok, value)):
                self._resolve(ex, j, iok, ival, done, False)
            ex.next = 1
        else:
            self._resolve(ex, i, ok, value, done, raw)
            results = ex.results
            n = ex.nwire
            j = ex.next
            while j < n and results[j] is not _UNSET:
                j += 1
            ex.next = j
        if ex.next == ex.nwire:
            inflight = self._inflight
            if inflight and inflight[0] is ex:
                inflight.popleft()
            else:
                inflight.remove(ex)
            self._check_done(ex, done)  # (not done while a reply is still to be read)

    def _check_done(self, ex: Exchange, done: list) -> None:
        if ex.remaining == 0 and ex.next == ex.nwire and not ex.done:
            ex.done = True
            if ex.parent is None:
                done.append(ex)

    @staticmethod
    def _batch_items(ex: Exchange, ok: bool, value: Any) -> list:
        n = len(ex.entries)
        if not ok:
            # The BATCH frame itself was refused (too many operations, say).
            return [(False, value)] * n
        if type(value) is not list or len(value) != n:
            raise E.ProtocolError("BATCH reply does not hold one result per operation")
        items = []
        for item in value:
            if type(item) is not list or len(item) != 2:
                raise E.ProtocolError("malformed BATCH result item")
            items.append((item[0] == codec.STATUS_OK, item[1]))
        return items

    def _resolve(self, ex: Exchange, i: int, ok: bool, value: Any, done: list,
                 raw: bool) -> None:
        """Turn call ``i``'s reply into its result: decoded value, exception object, or
        the first page of a RANGE that continues."""
        op, args, decode = ex.entries[i]
        if not ok:
            res: Any = E.error_from_code(value[0], value[1])
            if op == "HELLO":
                raise res  # the server closes a refused session
        elif decode is None:
            res = value
        else:
            if decode is _dec_columns and not raw:
                decode = _dec_scrolls_or_none  # the value came decoded (BATCH, say)
            try:
                res = decode(self, args, value)
            except Exception as exc:  # a malformed result fails this call only
                res = exc
        if ex.parent is not None:
            # A continuation's page belongs to its parent's call.
            ex.results[i] = None
            ex.remaining -= 1
            self._continue(ex.parent, ex.slot, res, done)
            return
        if type(res) is _Page:
            ex.results[i] = _Pages(args)
            self._continue(ex, i, res, done)
            return
        ex.results[i] = res
        ex.remaining -= 1

    def _continue(self, ex: Exchange, slot: int, res: Any, done: list) -> None:
        """Add one RANGE page to ``ex.results[slot]``; ask for the next one if needed."""
        acc = ex.results[slot]
        if type(res) is _Page:
            acc.pages.append(res.items)
            acc.got += len(res.items)
            limit = acc.limit
            if not ex.abandoned and (limit is None or acc.got < limit):
                args = list(acc.args)
                args[1] = None if limit is None else limit - acc.got
                args[2] = res.after
                child = self.exchange([("RANGE", args, _dec_range)], gets_only=False)
                child.parent = ex
                child.slot = slot
                return
            res = acc.merged()
        elif not isinstance(res, BaseException):
            acc.pages.append(res)
            res = acc.merged()
        ex.results[slot] = res
        ex.remaining -= 1
        self._check_done(ex, done)

    def abandon(self, ex: Exchange) -> None:
        """Nobody waits for ``ex`` any more (a timed-out call): its late replies are
        read and dropped, and no further RANGE pages are asked for."""
        ex.abandoned = True

    def fail(self, exc: BaseException) -> list[Exchange]:
        """End every pending exchange with ``exc`` (the connection is gone).

        :returns: the top-level exchanges that were pending, now done.
        """
        ended: list[Exchange] = []
        inflight, self._inflight = self._inflight, deque()
        for ex in inflight:
            top = ex
            while top.parent is not None:
                top = top.parent
            for x in (ex, top):
                if not x.done:
                    x.results = [exc if r is _UNSET or type(r) is _Pages else r
                                 for r in x.results]
                    x.error = exc
                    x.remaining = 0
                    x.next = x.nwire
                    x.done = True
                    if x.parent is None:
                        ended.append(x)
        return ended

    # -- results of the hot calls -------------------------------------------------------------


def reply_value(reply: tuple[bool, Any]) -> Any:
    """The success value of ``(ok, value)``, or raise the server's error."""
    ok, value = reply
    if ok:
        return value
    raise E.error_from_code(value[0], value[1])


# -- result decoders: decode(session, args, value) -> result ----------------------------------


def decode_scroll(s: Session, args: Any, r: Any) -> Any:
    """The GET decoder: a reply value -> a Scroll (or None).

    :raises ProtocolError: a value that is not ``[key, content, version, created,
        updated]``.
    """
    if r is None:
        return None
    try:
        key, content, version, created, updated = r
        if type(key) is not bytes or len(key) != codec.KEY_SIZE:
            got = f"{len(key)} bytes" if type(key) is bytes else type(key).__name__
            raise ValueError(f"its key is {got}, not 18 bytes")
        return Scroll(key, content, version, created, updated, s.names)
    except (TypeError, ValueError, OverflowError) as exc:
        # (a field of the wrong type, or a version or time out of its C range)
        raise E.ProtocolError(f"malformed scroll in reply: {exc}") from None


def _stored(scrolls: Scrolls) -> Scrolls:
    """The items of a result where a scroll is stored (a RANGE page has no others)."""
    return scrolls.stored()


def _dec_scrolls(s: Session, args: Any, r: Any) -> Scrolls:
    return _stored(codec.wire_to_scrolls(r, s.names))


def _dec_scrolls_or_none(s: Session, args: Any, r: Any) -> Scrolls:
    return codec.wire_to_scrolls(r, s.names)


def _dec_columns(s: Session, args: Any, raw: tuple) -> Any:
    """A full GET_MANY reply, given raw ``(body, offset of the value)``."""
    body, pos = raw
    scrolls, end = codec.decode_scrolls(body, pos, s.names)
    if end != len(body):
        raise E.ProtocolError("GET_MANY reply: bytes after the scroll list")
    return scrolls


def _reads_raw(entry: tuple) -> bool:
    """Whether a call's success reply goes to its decoder undecoded, as
    ``(body, offset of the value)``: the scroll lists of GET_MANY and RANGE pages."""
    decode = entry[2]
    return decode is _dec_columns or (decode is _dec_range and not entry[1][3])


def _dec_contents(s: Session, args: list, r: Any) -> list:
    n = len(args[0]) // KEY_SIZE
    if type(r) is not list or len(r) != n:
        got = f"{len(r)} values" if type(r) is list else type(r).__name__
        raise E.ProtocolError(f"GET_MANY values-only reply: expected {n} values, got {got}")
    return r


def _dec_range(s: Session, args: list, r: Any) -> Any:
    if type(r) is tuple:
        # Raw (body, offset): [scroll list, after], the list read by the compiled reader.
        body, pos = r
        if body[pos] != 0x92:
            raise E.ProtocolError("malformed RANGE reply")
        scrolls, end = codec.decode_scrolls(body, pos + 1, s.names)
        after = codec.unpackb(memoryview(body)[end:])
        items = _stored(scrolls)
        return items if after is None else _Page(items, after)
    try:
        body, after = r
    except (TypeError, ValueError):
        raise E.ProtocolError("malformed RANGE reply") from None
    items = codec.unpack_coords(body) if args[3] else _dec_scrolls(s, None, body)
    if after is None:
        return items
    return _Page(items, after)


def _dec_nearest(s: Session, args: Any, r: Any) -> tuple:
    try:
        blob, dist = r
    except (TypeError, ValueError):
        raise E.ProtocolError("malformed NEAREST reply") from None
    return codec.unpack_coords(blob), np.asarray(dist, dtype=np.int64)


def _dec_coord(s: Session, args: Any, r: Any) -> Any:
    return None if r is None else codec.unpack_coord(r)


def _dec_attend(s: Session, args: Any, r: Any) -> dict:
    if type(r) is dict and type(r.get("keys")) is bytes:
        r["keys"] = codec.unpack_coords(r["keys"])
    return r


def _dec_interned(s: Session, args: list, ids: Any) -> Any:
    # Ids are positional, so a name can be cached only if its id is the next one;
    # anything else is left for the table to resolve on a miss.
    table = s.names
    if isinstance(ids, list):
        for name, i in zip(args[0], ids):
            if name not in table and i == NAME_BASE + len(table):
                table.extend([name])
    return ids


def _dec_names(s: Session, args: Any, r: Any) -> Any:
    if isinstance(r, list):
        s.names.extend_from(r)
    return r


# -- argument encoders ------------------------------------------------------------------------


def as_key(key: Any, what: str = "key") -> bytes:
    """An 18-byte packed coordinate, checked as the engine checks it
    (:func:`vtpu.engine.check_key`).

    :raises InterfaceError: anything else.
    """
    if type(key) is bytes and len(key) == KEY_SIZE:
        return key  # already one (the common case of a pipeline queued by the thousand)
    return check_key(key, what)


def as_blob(blob: Any, what: str = "keys") -> bytes:
    """An N*18-byte blob of packed keys from bytes or an ``(N, 9)`` uint16 array, checked
    as the engine checks it (:func:`vtpu.engine.check_blob`).

    :raises InterfaceError: anything else.
    """
    return check_blob(blob, what)


def _as_pattern(p: Any, what: str = "pattern") -> bytes:
    # Exactly a (2, 9) uint16 array, as the engine takes it: another dtype is refused,
    # never cast. Its two rows packed are the wire's 36 bytes (codec.pack_pattern).
    return _core.pack_many(_core.check_pattern(p, what))


def _as_values(v: Any) -> Any:
    v = check_values(v)
    if v is None:
        return None
    return codec.pack_delta(v) if v.dtype == np.int32 else codec.pack_pattern(v)


class ClientOps:
    """The Engine-shaped methods, written once over an abstract ``_submit``.

    Each method shapes its arguments into one request ``(opcode, args, decode)`` and
    hands it to ``_submit(op, args, decode, timeout)``:
    :class:`vtpu.netclient.RemoteEngine` runs it at once, the pipelines queue it, and
    :class:`vtpu.aio.AsyncRemoteEngine` returns a coroutine. Method names, arguments and
    results are those of :class:`vtpu.backend.Backend`.
    """

    def _submit(self, op: str, args: list, decode: Any,
                timeout: float | None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def request(self, op: str, args: list, *, timeout: float | None = None) -> Any:
        """Send one request exactly as given (PROTOCOL.md shapes); for tools and tests.

        :param op: an opcode.
        :param args: its argument array, already in wire form (packed keys, ...).
        :returns: the success value, undecoded.
        :raises ServerError: (and subclasses) the server's error answer.
        """
        return self._submit(op, list(args), None, timeout)

    # -- single key ------------------------------------------------------------------------
    def get(self, key: bytes, *, timeout: float | None = None) -> Any:
        """Read one scroll.

        :param key: packed coordinate (18 bytes) or a ``(9,)`` array.
        :returns: a :class:`vtpu.coords.Scroll` or ``None``.
        :raises ConnectionError, TimeoutError: transport failures.
        """
        return self._submit("GET", [as_key(key)], decode_scroll, timeout)

    def put(self, key: bytes, content: Any, if_version: int | None = None, *,
            timeout: float | None = None) -> Any:
        """Write one scroll.

        :param key: packed coordinate.
        :param content: str, bytes, numpy array or any msgpack-able value.
        :param if_version: compare-and-set: write only if the current version is this
            (0 = only if absent).
        :returns: the new version.
        :raises VersionConflict: the compare-and-set failed.
        """
        k = as_key(key)
        if if_version is None:
            args = [k, content]
        else:
            args = [k, content, check_count(if_version, "if_version")]
        return self._submit("PUT", args, None, timeout)

    def delete(self, key: bytes, *, timeout: float | None = None) -> Any:
        """Delete one scroll. :returns: 1 if it existed, else 0."""
        return self._submit("DEL", [as_key(key)], None, timeout)

    # -- many keys ---------------------------------------------------------------------------
    def get_many(self, blob: bytes, content_only: bool = False, *,
                 timeout: float | None = None) -> Any:
        """Read many scrolls in one round trip.

        :param blob: N*18 bytes of packed keys (or an ``(N, 9)`` array).
        :param content_only: return only the contents (``GET_MANY [keys, true]``): the
            server sends one array of N values, no keys, versions or times.
        :returns: a :class:`vtpu.results.Scrolls` of N entries (each a Scroll or
            ``None``, made when read); with ``content_only`` a list of N contents,
            ``None`` where nothing is stored.
        :raises ProtocolError: a values-only reply that is not an array of N values.
        """
        b = as_blob(blob)
        if content_only:
            return self._submit("GET_MANY", [b, True], _dec_contents, timeout)
        return self._submit("GET_MANY", [b], _dec_columns, timeout)

    def put_many(self, blob: bytes, contents: Any, *, timeout: float | None = None) -> Any:
        """Write many scrolls in one round trip.

        :param blob: N*18 bytes of packed keys (or an ``(N, 9)`` array).
        :param contents: a list of N contents, or an ndarray whose row i is content i
            (sent as one ext value, no per-row work).
        :returns: the list of new versions.
        """
        b = as_blob(blob)
        contents = check_contents(contents, len(b) // KEY_SIZE)
        return self._submit("PUT_MANY", [b, contents], None, timeout)

    def delete_many(self, blob: bytes, *, timeout: float | None = None) -> Any:
        """Delete many keys. :returns: how many existed."""
        return self._submit("DEL_MANY", [as_blob(blob)], None, timeout)

    def delete_range(self, pattern: Any, *, timeout: float | None = None) -> Any:
        """Delete every scroll matching a ``(2, 9)`` pattern. :returns: how many."""
        return self._submit("DEL_RANGE", [_as_pattern(pattern)], None, timeout)

    # -- queries -----------------------------------------------------------------------------
    def range(self, pattern: Any, limit: int | None = None, after: bytes | None = None,
              keys_only: bool = False, *, timeout: float | None = None) -> Any:
        """Scrolls matching a pattern, in coordinate order (the session follows the
        pages; one timeout budget for all of them).

        :param pattern: ``(2, 9)`` uint16 pattern.
        :param limit: at most this many (``None``: all).
        :param after: exclusive start key, for paging.
        :param keys_only: return an ``(M, 9)`` uint16 array of coordinates instead.
        :returns: a :class:`vtpu.results.Scrolls` (the pages joined), or an ndarray
            when ``keys_only``.
        """
        args = [_as_pattern(pattern), check_count(limit, "limit"),
                None if after is None else as_key(after, "after"), bool(keys_only)]
        return self._submit("RANGE", args, _dec_range, timeout)

    def count(self, pattern: Any, *, timeout: float | None = None) -> Any:
        """How many scrolls match a pattern."""
        return self._submit("COUNT", [_as_pattern(pattern)], None, timeout)

    def nearest(self, c: Any, k: int = 10, metric: str = "l1", within: Any = None, *,
                timeout: float | None = None) -> Any:
        """The k stored coordinates nearest to ``c``.

        :returns: ``(coords (m, 9) uint16, distances (m,) int64)``.
        """
        args = [codec.pack_coord(_core.check_coord(c)), check_count(k, "k", 0, MAX_K),
                check_metric(metric), None if within is None else _as_pattern(within, "within")]
        return self._submit("NEAREST", args, _dec_nearest, timeout)

    def hier(self, c: Any, direction: str, *, timeout: float | None = None) -> Any:
        """The next/previous stored coordinate in document order, or ``None``."""
        args = [codec.pack_coord(_core.check_coord(c)), check_direction(direction)]
        return self._submit("HIER", args, _dec_coord, timeout)

    def attend(self, q: Any, key_pattern: Any, top_k: int | None = None, values: Any = None,
               return_output: bool = True, mode: str | None = "auto", *,
               timeout: float | None = None) -> Any:
        """Attention of query ``q`` (a stored key or a vector) over matching scrolls.

        :param mode: "auto", "dot" or "distance" (see :meth:`vtpu.engine.Engine.attend`).
        :returns: the dict of :meth:`vtpu.engine.Engine.attend` (``keys`` as an
            ``(m, 9)`` array).
        """
        if not isinstance(q, np.ndarray):
            q = as_key(q, "a query key")
        args = [q, _as_pattern(key_pattern, "key pattern"), check_count(top_k, "top_k"),
                _as_values(values), bool(return_output)]
        if mode not in (None, "auto"):
            args.append(mode)   # sent only when asked, so older servers keep working
        return self._submit("ATTEND", args, _dec_attend, timeout)

    def attend_many(self, queries: Any, key_patterns: Any, top_k: int | None = None,
                    values: Any = None, return_weights: bool = False, *,
                    timeout: float | None = None) -> Any:
        """Many attention queries in one round trip (see :meth:`attend`).

        :param queries: ``(Q, d)`` float array, or packed keys of stored query vectors.
        :param key_patterns: ``(Q, 2, 9)`` uint16 patterns, one per query.
        :returns: the engine's dict (``outputs`` (Q, d_v), ``counts``, ``weights`` if asked).
        """
        if isinstance(queries, (bytes, bytearray, memoryview)):
            queries = as_blob(queries, "query keys")  # keys of stored query vectors
        else:
            queries = np.asarray(queries)   # as the engine takes them; it checks the rest
        pats = codec.pack_patterns(check_patterns(key_patterns))
        args = [queries, pats, check_count(top_k, "top_k"), _as_values(values),
                bool(return_weights)]
        return self._submit("ATTEND_MANY", args, _dec_attend, timeout)

    def kg(self, start: Any, deltas: Any, hops: int, max_frontier: int = 10000, *,
           timeout: float | None = None) -> Any:
        """Multi-hop traversal; returns the final frontier's scrolls."""
        args = [_as_pattern(start, "start"), codec.pack_deltas(check_deltas(deltas)),
                check_count(hops, "hops", 0, MAX_HOPS),
                check_count(max_frontier, "max_frontier", 1, MAX_FRONTIER)]
        return self._submit("KG", args, _dec_scrolls, timeout)

    # -- names and admin -----------------------------------------------------------------------
    def intern(self, names: list, *, intern: bool = True, timeout: float | None = None) -> Any:
        """Intern names on the server; returns their ids (0xF000 + index).

        :param intern: False only looks the names up: unknown ones answer None and
            nothing is added (what a read needs).
        """
        names = check_name_list(names)
        args = [names] if intern else [names, False]
        return self._submit("INTERN", args, _dec_interned, timeout)

    def name_table(self, *, timeout: float | None = None) -> Any:
        """The server's whole name table (index i = id 0xF000 + i); refreshes the cache."""
        return self._submit("NAMES", [], _dec_names, timeout)

    def reclaim_names(self, *, timeout: float | None = None) -> Any:
        """Free the server's name ids that no stored key uses; returns how many. Call
        :meth:`name_table` afterwards to refresh this client's cache."""
        return self._submit("RECLAIM_NAMES", [], None, timeout)

    def health(self, *, timeout: float | None = None) -> Any:
        """The server's health report."""
        return self._submit("HEALTH", [], None, timeout)

    def stats(self, *, timeout: float | None = None) -> Any:
        """The server's statistics."""
        return self._submit("STATS", [], None, timeout)

    def ping(self, *, timeout: float | None = None) -> Any:
        """Round trip with no work; returns ``"PONG"``."""
        return self._submit("PING", [], None, timeout)

    def import_phext(self, text: str, skip_invalid: bool = False, *,
                     timeout: float | None = None) -> Any:
        """Import a .phext document on the server; returns how many scrolls."""
        return self._submit("IMPORT_PHEXT", [check_text(text), bool(skip_invalid)], None,
                            timeout)

    def export_phext(self, pattern: Any = None, skip_invalid: bool = False, *,
                     timeout: float | None = None) -> Any:
        """Export scrolls (all, or those matching ``pattern``) as .phext text."""
        p = None if pattern is None else _as_pattern(pattern)
        return self._submit("EXPORT_PHEXT", [p, bool(skip_invalid)], None, timeout)


def idempotent(op: str) -> bool:
    """Whether a request with this opcode may be sent twice (PROTOCOL.md's table)."""
    return codec.OPS[op].idempotent
