"""Reclaiming name ids: names no stored key uses are freed and their ids reused only once
no never-used id is left; freed slots survive a restart in their places."""
from __future__ import annotations

import numpy as np
import pytest

from vtpu import _core
from vtpu.cli import main as cli_main
from vtpu.coords import MAX_NAMES, NAME_BASE, NameTable
from vtpu.engine import Engine
from vtpu.errors import LimitError
from vtpu.storage import Storage


def key_with(name_id: int, i: int = 0) -> bytes:
    return _core.pack(np.array([name_id, 1, 1, 1, 1, 1, 1, 1, i], dtype=np.uint16))


def test_reclaim_frees_only_unused_names_and_keeps_positions():
    e = Engine()
    ids = e.intern(["keep", "junk1", "junk2", "also_kept", "junk3"])
    assert ids == [NAME_BASE + i for i in range(5)]
    e.put(key_with(ids[0]), "x")
    e.put(key_with(ids[3]), "y")
    epoch = e.names.epoch
    assert e.reclaim_names() == 3
    assert e.name_table() == ["keep", "", "", "also_kept", ""]
    assert e.names.epoch != epoch
    assert e.names.is_free(ids[1]) and not e.names.is_free(ids[0])
    assert e.lookup_names(["junk1", "keep"]) == [None, ids[0]]
    assert e.get(key_with(ids[0])).coordinate.startswith("keep.")
    assert e.reclaim_names() == 0  # nothing more to free
    # New names take never-used ids first.
    assert e.intern(["fresh"]) == [NAME_BASE + 5]


def test_freed_ids_are_reused_only_when_no_fresh_id_is_left():
    t = NameTable()
    t.intern_many([f"n{i}" for i in range(MAX_NAMES)])
    with pytest.raises(LimitError):
        t.intern_many(["one_more"])
    assert t.reclaim([NAME_BASE + 7, NAME_BASE + 3]) == ["n3", "n7"]
    assert t.intern_many(["a", "b"]) == [NAME_BASE + 3, NAME_BASE + 7]
    assert t.free == 0
    with pytest.raises(LimitError):
        t.intern_many(["c"])


def test_reclaimed_slots_survive_a_restart(tmp_path):
    d = str(tmp_path / "db")
    e = Engine(Storage(d))
    ids = e.intern(["keep", "junk1", "junk2", "later"])
    e.put(key_with(ids[0]), "x")
    e.put(key_with(ids[3]), "y")
    assert e.reclaim_names() == 2
    e.close()
    e = Engine(Storage(d))
    assert e.name_table() == ["keep", "", "", "later"]
    assert e.names.free == 2 and e.get(key_with(ids[3])).coordinate.startswith("later.")
    assert e.intern(["new"]) == [NAME_BASE + 4]
    e.close()


def test_a_full_table_is_reclaimed_at_start_up(tmp_path, capsys):
    d = str(tmp_path / "db")
    e = Engine(Storage(d))
    ids = e.intern([f"junk{i}" for i in range(MAX_NAMES)])
    e.put(key_with(ids[10]), "used")
    with pytest.raises(LimitError):
        e.intern(["late_name"])
    e.close()
    e = Engine(Storage(d))
    assert e.names.free == MAX_NAMES - 1
    assert e.name_table()[10] == "junk10"
    assert e.intern(["late_name"]) == [NAME_BASE]  # every fresh id is used: a freed one
    e.close()
    # And on demand from the command line.
    e = Engine(Storage(d))
    e.intern(["junk_again"])
    e.close()
    assert cli_main(["reclaim-names", "--url", f"file://{d}"]) == 0
    assert "reclaimed 2 name ids" in capsys.readouterr().out  # late_name, junk_again


def test_a_failed_commit_puts_freed_and_reused_slots_back():
    t = NameTable([f"n{i}" for i in range(MAX_NAMES)])
    t.committed()
    t.reclaim([NAME_BASE + 1, NAME_BASE + 2])
    assert t.intern_many(["x"]) == [NAME_BASE + 1]
    t.truncate(MAX_NAMES)  # the commit of both failed
    assert t.free == 0 and t.lookup("n1", False) == NAME_BASE + 1
    assert t.lookup("n2", False) == NAME_BASE + 2 and t.lookup("x", False) is None
    t.reclaim([NAME_BASE + 5])
    t.committed()
    t.truncate(MAX_NAMES)  # a later failure keeps what was committed
    assert t.is_free(NAME_BASE + 5)
