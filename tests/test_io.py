"""Outputs survive crashes: atomic writes keep the old file; resumable JSONL has no duplicates or gaps."""

import json

import pytest

from deliberate.services.io import ResumableJsonl, read_jsonl, write_jsonl


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise KeyboardInterrupt  # interrupted while producing rows

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(path, rows())
    assert read_jsonl(path) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary files left behind


def test_an_interrupted_output_resumes_without_duplicates_or_gaps(tmp_path):
    path = tmp_path / "gen.jsonl"
    out = ResumableJsonl(path)
    out.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
    with open(out.partial, "a") as f:  # a crash in the middle of writing row c
        f.write('{"key": "c", "v"')
    resumed = ResumableJsonl(path)
    assert resumed.done == {"a", "b"}
    resumed.append([{"key": "b", "v": 99}, {"key": "c", "v": 3}, {"key": "d", "v": 4}])
    rows = resumed.finish(order=["a", "b", "c", "d"])
    assert [(r["key"], r["v"]) for r in rows] == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    assert read_jsonl(path) == rows
    assert not out.partial.exists()


def test_a_finished_output_counts_as_done_and_can_grow(tmp_path):
    path = tmp_path / "gen.jsonl"
    first = ResumableJsonl(path)
    first.append([{"key": "a"}])
    first.finish()
    again = ResumableJsonl(path)
    assert again.done == {"a"}
    again.append([{"key": "b"}])
    assert [r["key"] for r in ResumableJsonl(path).finish(order=["a", "b"])] == ["a", "b"]


def test_finishing_with_missing_rows_refuses_to_write(tmp_path):
    out = ResumableJsonl(tmp_path / "gen.jsonl")
    out.append([{"key": "a"}])
    with pytest.raises(RuntimeError, match="1 rows missing"):
        out.finish(order=["a", "b"])
    assert not (tmp_path / "gen.jsonl").exists()
    assert json.loads(out.partial.read_text())["key"] == "a"
