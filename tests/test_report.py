import json
import os

import pytest

from pfd.report import append_jsonl, format_table, write_json


def test_write_json_is_atomic_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1.5, "t": (1, 2), "bad": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1.5, "t": [1, 2], "bad": None}

    def boom(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"a": 2})
    assert json.loads(path.read_text())["a"] == 1.5  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left


def test_write_json_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        write_json(tmp_path / "nope" / "r.json", {})


def test_append_jsonl(tmp_path):
    path = tmp_path / "log.jsonl"
    for i in range(3):
        append_jsonl(path, {"step": i})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]


def test_format_table():
    text = format_table([{"a": "x", "b": 1.23456}, {"a": "yy", "b": None}], ["a", "b"])
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b"] and lines[2].split() == ["x", "1.235"] and lines[3].split() == ["yy", "-"]
