"""The `vtpu` command: demo, get/put/range/del, import/export, stats."""
import io
import json
import os
import subprocess
import sys

import pytest

import vtpu
from vtpu.cli import demo, main
from vtpu.phext import parse_phext
from vtpu.testing import running_server, shared_data_dir

PHEXT_DIR = os.path.join(shared_data_dir(), "phext")


@pytest.mark.integration
def test_demo_on_a_loopback_server_it_starts():
    out = io.StringIO()
    assert demo(out=out) == 0
    text = out.getvalue()
    for line in ["Status: ok", "Read: Hello from vTPU client!",
                 "2.1.3/4.7.11/18.29.47 + +0.0.0/+0.0.5/+0.0.0 = 2.1.3/4.7.16/18.29.47",
                 "CNEAREST", "CHIER", "CROUTE", "CATTEND over 64 keys", "CMOE",
                 "CKG spouse of person 1001: [('person.1002.1/attr.name.1/1.1.1', 'Bob')]",
                 "Total calls:", "vtpu demo complete"]:
        assert line in text, line


def test_demo_embedded():
    out = io.StringIO()
    assert demo(url="mem://", out=out) == 0
    assert "vtpu demo complete" in out.getvalue()


@pytest.mark.integration
def test_point_commands_against_a_server(capsys):
    with running_server() as (host, port):
        url = f"vtpu://{host}:{port}"
        assert main(["put", "1.2.3/4.5.6/7.8.9", "hello", "--url", url]) == 0
        assert "version 1" in capsys.readouterr().out
        assert main(["get", "1.2.3/4.5.6/7.8.9", "--url", url]) == 0
        assert capsys.readouterr().out.strip() == "hello"
        assert main(["range", "1.2.*/*.*.*/*.*.*", "--keys-only", "--url", url]) == 0
        assert capsys.readouterr().out.split() == ["1.2.3/4.5.6/7.8.9"]
        assert main(["stats", "--url", url]) == 0
        assert json.loads(capsys.readouterr().out)["scrolls"] == 1
        assert main(["del", "1.2.3/4.5.6/7.8.9", "--url", url]) == 0
        assert "deleted 1" in capsys.readouterr().out
        assert main(["get", "1.2.3/4.5.6/7.8.9", "--url", url]) == 1
        # a bad coordinate: a clear message and a non-zero status, nothing raised
        assert main(["put", "1.2.3/4.5", "x", "--url", url]) == 1
        assert "CoordinateError" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["basic.phext", "events.phext"])
def test_import_export_file_store(tmp_path, capsys, name):
    src = os.path.join(PHEXT_DIR, name)
    url = f"file://{tmp_path / 'store'}"
    assert main(["import", src, "--url", url]) == 0
    with open(src, encoding="utf-8", newline="") as f:
        expected = parse_phext(f.read())
    assert f"imported {len(expected)} scrolls" in capsys.readouterr().out
    out = tmp_path / "out.phext"
    assert main(["export", str(out), "--url", url]) == 0
    with open(out, encoding="utf-8", newline="") as f:
        assert parse_phext(f.read()) == expected
    c = vtpu.connect(url)   # the store is durable: a new client sees every scroll
    try:
        assert c.ccount("*.*.*/*.*.*/*.*.*") == len(expected)
    finally:
        c.close()


def test_export_refuses_what_phext_cannot_hold(tmp_path, capsys):
    url = f"file://{tmp_path / 'store'}"
    c = vtpu.connect(url)
    c.cput("1.1.1/1.1.1/1.1.1", "fine")
    c.cput("0.1.1/1.1.1/1.1.2", "a zero component")
    c.close()
    out = tmp_path / "out.phext"
    assert main(["export", str(out), "--url", url]) == 1
    assert "0.1.1/1.1.1/1.1.2" in capsys.readouterr().err
    assert main(["export", str(out), "--skip-invalid", "--url", url]) == 0
    with open(out, encoding="utf-8", newline="") as f:
        assert parse_phext(f.read()) == [((1,) * 9, "fine")]


def test_python_dash_m_vtpu_help():
    r = subprocess.run([sys.executable, "-m", "vtpu", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "serve" in r.stdout and "bench" in r.stdout
