"""Scroll, the core's extension type: attributes, mapping access, equality, repr,
immutability and pickling; and the call meter that counts and times a client's reads."""
import copy
import inspect
import pickle

import numpy as np
import pytest

import vtpu
from vtpu import _core
from vtpu.coords import NameTable, Scroll
from vtpu.errors import CoordinateError, InterfaceError
from vtpu.testing import running_server

KEY = _core.pack(_core.parse_coord("1.2.3/4.5.6/7.8.9"))


def test_one_type_everywhere_with_the_documented_constructor():
    assert vtpu.Scroll is Scroll is _core.Scroll
    assert list(inspect.signature(Scroll).parameters) == [
        "key", "content", "version", "created_at", "updated_at", "names"]
    s = Scroll(KEY, "x", 3, 1.5, 2.5)
    by_name = Scroll(key=KEY, content="x", version=3, created_at=1.5, updated_at=2.5,
                     names=None)
    assert s == by_name and s.names is None
    assert (s.key, s.content, s.version, s.created_at, s.updated_at) == (KEY, "x", 3, 1.5, 2.5)
    assert type(s.version) is int and type(s.created_at) is float
    # times given as ints are kept as the doubles they stand for
    assert Scroll(KEY, "x", 1, 2, 3).created_at == 2.0
    with pytest.raises(TypeError):
        Scroll("not bytes", "x", 1, 1.0, 1.0)
    with pytest.raises(TypeError):
        Scroll(KEY, "x", 1, None, 1.0)


def test_a_store_read_is_a_scroll():
    m = vtpu.connect("mem://")
    m.cput("1.2.3/4.5.6/7.8.9", "hello")
    s = m.cget("1.2.3/4.5.6/7.8.9")
    assert isinstance(s, Scroll) and type(s) is Scroll
    assert s.key == KEY and s.content == "hello" and s.version == 1
    r = m.crange("1.2.3/4.5.6/*.*.*")
    assert isinstance(r[0], Scroll) and r[0] == s


def test_coordinate_and_coords_go_through_the_name_table():
    names = NameTable()
    c = _core.parse_coord("person.1.2/3.4.5/6.7.8", names)
    s = Scroll(_core.pack(c), None, 1, 1.0, 1.0, names)
    assert s.coordinate == "person.1.2/3.4.5/6.7.8"
    assert s.coords.dtype == np.uint16 and s.coords.tolist() == c.tolist()
    assert s.names is names
    # a name id with no table to resolve it: the error names the component
    with pytest.raises(CoordinateError, match="component 1"):
        Scroll(_core.pack(c), None, 1, 1.0, 1.0).coordinate
    # a key of the wrong size is explained, not misread
    with pytest.raises(InterfaceError):
        Scroll(b"short", None, 1, 1.0, 1.0).coordinate


def test_mapping_access():
    s = Scroll(KEY, {"a": 1}, 2, 1.0, 2.0)
    fields = ("coordinate", "content", "version", "created_at", "updated_at")
    assert s.keys() == fields and list(s) == list(fields) and len(s) == 5
    assert dict(s) == {"coordinate": "1.2.3/4.5.6/7.8.9", "content": {"a": 1}, "version": 2,
                       "created_at": 1.0, "updated_at": 2.0}
    assert s["content"] == {"a": 1} and s["coordinate"] == "1.2.3/4.5.6/7.8.9"
    assert s.get("version") == 2 and s.get("key") is None and s.get("nope", 7) == 7
    assert "content" in s and "key" not in s
    for bad in ("key", "names", 0, "nope"):
        with pytest.raises(KeyError):
            s[bad]


def test_equality_hash_and_immutability():
    a = Scroll(KEY, np.arange(4, dtype=np.float32), 1, 1.0, 2.0)
    assert a == Scroll(KEY, np.arange(4, dtype=np.float32), 1, 1.0, 2.0)
    assert not (a != Scroll(KEY, np.arange(4, dtype=np.float32), 1, 1.0, 2.0))
    assert a != Scroll(KEY, np.arange(4, dtype=np.float64), 1, 1.0, 2.0)   # dtype
    assert a != Scroll(KEY, np.arange(5, dtype=np.float32), 1, 1.0, 2.0)   # shape
    assert a != Scroll(KEY, list(range(4)), 1, 1.0, 2.0)                   # not an array
    b = Scroll(KEY, "x", 1, 1.0, 2.0)
    for other in (Scroll(KEY, "x", 2, 1.0, 2.0), Scroll(KEY, "x", 1, 0.0, 2.0),
                  Scroll(KEY, "x", 1, 1.0, 3.0), Scroll(bytes(18), "x", 1, 1.0, 2.0),
                  Scroll(KEY, "y", 1, 1.0, 2.0)):
        assert b != other and not (b == other)
    assert b != ("x",) and b != None  # noqa: E711
    with pytest.raises(TypeError):
        hash(b)
    for field in ("key", "content", "version", "created_at", "updated_at", "names"):
        with pytest.raises(AttributeError):
            setattr(b, field, None)
    with pytest.raises(AttributeError):
        b.other = 1


def test_repr():
    assert repr(Scroll(KEY, "x", 4, 1.0, 2.0)) == "Scroll(1.2.3/4.5.6/7.8.9, version=4, content='x')"
    arr = Scroll(KEY, np.zeros((2, 3), np.float32), 1, 1.0, 1.0)
    assert repr(arr) == ("Scroll(1.2.3/4.5.6/7.8.9, version=1, "
                         "content=ndarray(dtype=float32, shape=(2, 3)))")
    long = repr(Scroll(KEY, "y" * 100, 1, 1.0, 1.0))
    assert long.endswith("...)") and len(long) < 110
    named = _core.pack(np.array([0xF000] + [1] * 8, dtype=np.uint16))
    assert repr(Scroll(named, 1, 1, 1.0, 1.0)) == f"Scroll({named.hex()}, version=1, content=1)"


def test_pickle_and_copy():
    s = Scroll(KEY, np.arange(3), 5, 1.0, 2.0)
    for back in (pickle.loads(pickle.dumps(s)), copy.copy(s), copy.deepcopy(s)):
        assert type(back) is Scroll and back == s and back.names is None


class Tagged(Scroll):
    __slots__ = ()

    @property
    def tag(self):
        return self.content.upper()


def test_subclasses_build_and_read_as_scrolls():
    t = Tagged(KEY, "x", 1, 1.0, 1.0)
    assert isinstance(t, Scroll) and t.tag == "X" and t == Scroll(KEY, "x", 1, 1.0, 1.0)
    assert type(pickle.loads(pickle.dumps(t))) is Tagged


def test_fields_read_the_same_by_any_name_object_and_subclasses_keep_theirs():
    """Reads of content, coordinate and version answer alike whether the attribute name
    is the interned one (``s.content``) or a str built at run time (``getattr``), and a
    subclass that redefines one of them is read through its own definition."""
    s = Scroll(KEY, ["a", 1], 3, 1.0, 2.0)
    for field in ("content", "coordinate", "version", "created_at", "key"):
        built = "".join(list(field))            # equal, but not the interned object
        assert built is not field and getattr(s, built) == getattr(s, field)
    assert [s[f] for f in s.keys()] == [s.coordinate, s.content, 3, 1.0, 2.0]
    assert s.content == ["a", 1] and s.version == 3
    assert s.coordinate == "1.2.3/4.5.6/7.8.9"

    class Redefined(Scroll):
        content = property(lambda self: "own content")
        coordinate = property(lambda self: "own coordinate")
        version = property(lambda self: -1)

    r = Redefined(KEY, "stored", 3, 1.0, 2.0)
    assert (r.content, r.coordinate, r.version) == ("own content", "own coordinate", -1)
    with pytest.raises(AttributeError):
        s.no_such_field
    with pytest.raises(AttributeError):
        s.content = "other"                     # still read-only


def test_the_key_is_held_in_the_scroll_and_made_once():
    """A Scroll keeps its 18-byte key in itself: one made from a result's columns makes
    the bytes object when ``key`` is first read and keeps it; one made with a key object
    gives that object back; a key of another length is kept as given."""
    given = Scroll(KEY, "c", 2, 1.0, 2.0)
    assert given.key is KEY
    res = _core.Scrolls.from_scrolls([given, None])
    s = res[0]
    assert s.key == KEY and s.key is s.key and s == given and given == s
    assert s.coordinate == given.coordinate == _core.format_key(KEY)
    assert s != Scroll(KEY[:-1] + b"\x0a", "c", 2, 1.0, 2.0)
    short = Scroll(b"short", "c", 2, 1.0, 2.0)
    assert short.key == b"short" and short != given and "73686f7274" in repr(short)
    assert pickle.loads(pickle.dumps(s)) == s and copy.copy(s) == s
    m = vtpu.connect("mem://")
    m.cput(KEY, "x")
    k = bytes(bytearray(KEY))
    assert m.cget(k).key is k            # a point read keeps the caller's key object


def test_call_meter_counts_times_and_passes_errors_through():
    def fn(x):
        if x is None:
            raise KeyError("none")
        return x * 2

    m = _core.CallMeter(fn)
    assert (m.calls, m.errors, m.seconds) == (0, 0, 0.0)
    assert m.call(21) == 42 and m.call("a") == "aa"
    with pytest.raises(KeyError):
        m.call(None)
    assert (m.calls, m.errors) == (2, 1) and m.seconds > 0.0


def test_call_meter_over_a_column_stores_get_reads_and_counts_as_any_function():
    """A meter whose function is a column store's own get (what an embedded client's
    cget is) answers, counts and refuses exactly as a meter over any function does."""
    store = _core.ColumnStore()
    k = _core.pack(np.array([1] * 9, np.uint16))
    store.put(k, "v", 1.0)
    fast = _core.CallMeter(store.get)
    slow = _core.CallMeter(lambda key: store.get(key))
    for m in (fast, slow):
        assert m.read(k) == store.get(k) and m.call(k).content == "v"
        assert m.read(b"\0" * 18) is None
        with pytest.raises(InterfaceError):
            m.call(b"short")
        assert (m.calls, m.errors) == (3, 1)
    other = _core.ColumnStore()
    assert _core.CallMeter(other.get).read(k) is None   # (the store it was given)


def test_call_meter_read_converts_a_coordinate_as_cget_does():
    seen = []

    def fn(key):
        seen.append(key)
        if key == b"\xff" * 18:
            raise KeyError("boom")
        return len(key)

    def resolve(c):
        if c == "bad":
            raise CoordinateError("bad coordinate")
        return None if c == "nothing" else _core.pack(np.array(c, np.uint16))

    m = _core.CallMeter(fn, resolve)
    row = np.arange(1, 10, dtype=np.uint16)
    assert m.read(KEY) == 18 and seen[-1] is KEY               # a key as it is
    assert m.read(row) == 18 and seen[-1] == _core.pack(row)    # a (9,) row packed in C
    assert m.read(row[::-1].copy()[::-1]) == 18                 # any strides
    assert m.read(list(range(1, 10))) == 18 and seen[-1] == _core.pack(row)  # resolved
    assert m.read("nothing") is None and len(seen) == 4         # counted, fn not called
    with pytest.raises(CoordinateError):
        m.read("bad")                                           # not counted
    with pytest.raises(KeyError):
        m.read(b"\xff" * 18)                                    # counted as an error
    assert (m.calls, m.errors) == (5, 1) and m.seconds > 0.0
    with pytest.raises(InterfaceError):
        _core.CallMeter(fn).read("1.1.1/1.1.1/1.1.1")           # no resolver: keys only


def test_call_meter_write_converts_a_coordinate_as_cput_does():
    seen = []

    def put(key, content, if_version):
        seen.append((key, content, if_version))
        if content == "boom":
            raise KeyError("boom")
        return 7

    def resolve(c):
        if c == "bad":
            raise CoordinateError("bad coordinate")
        return _core.pack(np.array(c, np.uint16))

    m = _core.CallMeter(put, resolve)
    row = np.arange(1, 10, dtype=np.uint16)
    assert m.write(KEY, "a") == 7 and seen[-1] == (KEY, "a", None) and seen[-1][0] is KEY
    assert m.write(row, "b", 3) == 7 and seen[-1] == (_core.pack(row), "b", 3)
    assert m.write(list(range(1, 10)), "c", if_version=0) == 7 and seen[-1][2] == 0
    with pytest.raises(CoordinateError):
        m.write("bad", "x")                     # refused converting: not counted
    with pytest.raises(KeyError):
        m.write(KEY, "boom")                    # counted as an error
    assert (m.calls, m.errors, len(seen)) == (3, 1, 4) and m.seconds > 0.0


@pytest.mark.integration  # a loopback server
def test_cput_is_the_write_meter_on_a_remote_client_and_locked_embedded():
    with running_server() as (host, port):
        _cput_forms(vtpu.connect(f"vtpu://{host}:{port}"))


def _cput_forms(remote):
    assert "cput" in vars(remote) and remote.cput.__self__ is remote._puts
    assert remote.cput("1.1.1/1.1.1/1.1.1", "a") == 1 and remote.cput(KEY, "b") == 1
    emb = vtpu.connect("mem://")      # not thread-safe: the facade's method and lock
    assert "cput" not in vars(emb) and emb.cput("1.1.1/1.1.1/1.1.1", "a") == 1
    for c in (remote, emb):
        with pytest.raises(vtpu.errors.VersionConflict):
            c.cput("1.1.1/1.1.1/1.1.1", "z", if_version=5)
        st = c.get_stats()
        assert st["by_op"]["cput"] == (2 if c is remote else 1) and st["errors"] == 1
    remote.close()


def test_a_client_subclass_keeps_its_own_cget():
    class Counting(vtpu.client.Client):
        n = 0

        def cget(self, coord):
            Counting.n += 1
            return super().cget(coord)

    plain = vtpu.connect("mem://")
    c = Counting(plain.backend)
    c.cput("1.1.1/1.1.1/1.1.1", "a")
    assert c.cget("1.1.1/1.1.1/1.1.1").content == "a" and Counting.n == 1
    assert plain.cget.__self__ is not None and "cget" in vars(plain)   # bound to the meter
    assert "cget" not in vars(c)


def test_client_statistics_count_cget():
    m = vtpu.connect("mem://")
    m.cput("1.1.1/1.1.1/1.1.1", "a")
    assert m.cget("1.1.1/1.1.1/1.1.1").content == "a"
    assert m.cget(KEY) is None
    assert m.cget("1.1.1/1.1.1/nosuchname.1.1") is None   # answered without a lookup
    with pytest.raises(InterfaceError):
        m.cget(b"x" * 17)   # refused while reading the coordinate: no call made
    st = m.get_stats()
    assert st["by_op"]["cget"] == 3 and st["by_op"]["cput"] == 1
    assert st["total_calls"] == 4 and st["errors"] == 0 and st["total_time_s"] > 0


def test_scrolls_iterators_are_independent_and_hint_their_length():
    items = [Scroll(_core.pack(np.full(9, i + 1, np.uint16)), f"c{i}", i + 1, 1.0, 2.0)
             for i in range(5)] + [None]
    res = _core.Scrolls.from_scrolls(items)
    a, b = iter(res), iter(res)
    assert iter(a) is a and a.__length_hint__() == 6
    first = next(a)
    assert first == items[0] and a.__length_hint__() == 5
    assert list(b) == items and list(a) == items[1:]
    assert a.__length_hint__() == 0 and next(a, "end") == "end" and next(a, "end") == "end"
    assert list(reversed(res)) == items[::-1]


def test_scrolls_with_plain_contents_are_not_tracked_by_the_collector():
    """A Scroll the store or the codec makes is off the cycle collector's lists when its
    content holds no references (it cannot be in a cycle, like a tuple of such values);
    one holding a list or an array stays tracked, so a cycle through it is collected."""
    import gc

    m = vtpu.connect("mem://")
    plain = ["text", b"bytes", 7, 2.5, True, None]
    keys = [_core.pack(np.array([1, 1, 1, 1, 1, 1, 1, 1, i + 1], np.uint16))
            for i in range(len(plain) + 2)]
    for k, c in zip(keys, plain):
        m.cput(k, c)
    m.cput(keys[-2], [1, [2, 3]])
    m.cput(keys[-1], np.arange(3, dtype=np.int16))
    got = m.cget_many(b"".join(keys))
    assert [s.content for s in got[:len(plain)]] == plain
    assert not any(gc.is_tracked(s) for s in got[:len(plain)])
    assert gc.is_tracked(got[len(plain)]) and gc.is_tracked(got[len(plain) + 1])
    assert not gc.is_tracked(m.cget(keys[0])) and gc.is_tracked(m.cget(keys[-2]))

    from vtpu import wire
    res, _ = wire.decode_scrolls(wire.encode_scrolls([m.cget(keys[-2])]))
    s = res[0]
    assert gc.is_tracked(s)
    gc.collect()
    s.content.append(s)          # a cycle through the content: still collected
    del res, s
    assert gc.collect() >= 2     # the scroll and its list
