"""`kill -9` in the middle of paid work, against a local OpenAI-compatible server that counts requests: the rerun
re-sends at most the requests that were in flight (`max_concurrency`), and its output equals an uninterrupted
run's, with no row missing or twice."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import write_completions  # noqa: E402
from fake_openai import FakeOpenAI, Reply, sensible_judge  # noqa: E402

from deliberate.services.io import read_jsonl, write_jsonl  # noqa: E402

CONCURRENCY = 4
N = 64  # requests an uninterrupted run makes
KILL_AT = 32


def command(*args) -> list[str]:
    return [sys.executable, "-m", "deliberate", *map(str, args)]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "250"}


def api(section: str, url: str) -> list[str]:
    sets = [f"{section}.base_url={url}", f"{section}.max_concurrency={CONCURRENCY}", f"{section}.max_retries=0"]
    return [a for s in sets for a in ("--set", s)]


def kill_midway(server: FakeOpenAI, args: list[str]) -> int:
    """Start the command, `kill -9` it once the server has received KILL_AT requests; the requests it made."""
    proc = subprocess.Popen(command(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while server.calls < KILL_AT:
        if proc.poll() is not None:
            pytest.fail(f"finished before the kill: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.2)  # requests already on the wire are counted by the server
    return server.calls


def finish(server: FakeOpenAI, args: list[str]) -> int:
    before = server.calls
    done = subprocess.run(command(*args), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return server.calls - before


def slow(behaviour):
    def reply(request, n):
        r = behaviour(request, n)
        r.delay = 0.03
        return r
    return reply


def check(first: int, second: int, unique: int = N) -> None:
    resent = first + second - unique
    print(f"killed after {first} requests; the rerun sent {second}; re-sent {resent} (max_concurrency "
          f"{CONCURRENCY})")
    assert first < unique and 0 <= resent <= CONCURRENCY


def test_kill_9_mid_judge(tmp_path):
    answers = write_jsonl(tmp_path / "a.jsonl", [{"id": str(i), "prompt": f"q{i}", "expected": "comply",
                                                   "answer": "I'm sorry, I can't." if i % 3 else "Sure."}
                                                  for i in range(N)])

    def judge_args(out: Path, cache: Path, url: str) -> list[str]:
        return ["judge", answers, "--output", out, "--set", "judge.backend=openai", "--set", "judge.model=j",
                "--set", f"judge.cache={cache}", *api("judge", url)]

    with FakeOpenAI(slow(sensible_judge)) as server:
        first = kill_midway(server, judge_args(tmp_path / "run", tmp_path / "c.sqlite", server.base_url))
        second = finish(server, judge_args(tmp_path / "run", tmp_path / "c.sqlite", server.base_url))
    check(first, second)
    with FakeOpenAI(sensible_judge) as server:
        assert finish(server, judge_args(tmp_path / "fresh", tmp_path / "c2.sqlite", server.base_url)) == N
    got = (tmp_path / "run" / "judge" / "judgments.jsonl").read_text()
    assert got == (tmp_path / "fresh" / "judge" / "judgments.jsonl").read_text()
    assert sorted(r["id"] for r in map(json.loads, got.splitlines())) == sorted(str(i) for i in range(N))


def test_kill_9_mid_filter(tmp_path):
    for folder in ("run", "fresh"):
        write_completions(tmp_path / folder, n=N)

    def filter_args(out: Path, cache: Path, url: str) -> list[str]:
        return ["filter", "--output", out, "--set", "judge.backend=openai", "--set", "judge.model=j", "--set",
                f"judge.cache={cache}", *api("judge", url)]

    with FakeOpenAI(slow(sensible_judge)) as server:
        first = kill_midway(server, filter_args(tmp_path / "run", tmp_path / "c.sqlite", server.base_url))
        second = finish(server, filter_args(tmp_path / "run", tmp_path / "c.sqlite", server.base_url))
    check(first, second)
    with FakeOpenAI(sensible_judge) as server:
        assert finish(server, filter_args(tmp_path / "fresh", tmp_path / "c2.sqlite", server.base_url)) == N
    for name in ("judged.jsonl", "kept.jsonl"):
        assert (tmp_path / "run" / "filter" / name).read_text() == (tmp_path / "fresh" / "filter" / name).read_text()
    assert len(read_jsonl(tmp_path / "run" / "filter" / "judged.jsonl")) == N


def teacher(request, n):
    prompt = request["messages"][-1]["content"]
    return Reply(f"<think>\nCategory: safe. Asking about {prompt[:20]} is allowed.\n</think>\nHere is help with "
                 f"{prompt}.")


def test_kill_9_mid_generate_with_an_openai_teacher(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": f"Tell me about topic {i}",
                                               "category": "safe", "expected": "comply"} for i in range(N // 2)])

    def generate_args(out: Path, url: str) -> list[str]:
        return ["generate", "--output", out, "--set", f"data.source={data}", "--set", "generate.backend=openai",
                "--set", "generate.teacher=t", "--set", "generate.samples=2", *api("generate", url)]

    with FakeOpenAI(slow(teacher)) as server:
        first = kill_midway(server, generate_args(tmp_path / "run", server.base_url))
        partial = read_jsonl(tmp_path / "run" / "generate" / "completions.jsonl.partial")
        second = finish(server, generate_args(tmp_path / "run", server.base_url))
        # The uninterrupted run on the same server: the server's URL is part of each completion's settings.
        assert finish(server, generate_args(tmp_path / "fresh", server.base_url)) == N
    check(first, second)
    assert len(partial) >= first - CONCURRENCY  # every completion that arrived was saved at once
    got = read_jsonl(tmp_path / "run" / "generate" / "completions.jsonl")
    assert got == read_jsonl(tmp_path / "fresh" / "generate" / "completions.jsonl")
    assert len({r["key"] for r in got}) == len(got) == N


def test_ctrl_c_mid_judge_says_what_is_kept_and_the_rerun_continues(tmp_path):
    answers = write_jsonl(tmp_path / "a.jsonl", [{"id": str(i), "prompt": f"q{i}", "expected": "comply",
                                                   "answer": "Sure."} for i in range(N)])
    args = ["judge", answers, "--output", tmp_path / "run", "--set", "judge.backend=openai", "--set",
            "judge.model=j", "--set", f"judge.cache={tmp_path / 'c.sqlite'}"]
    with FakeOpenAI(slow(sensible_judge)) as server:
        # SIGINT as a terminal delivers it: a suite started in the background (make under a non-interactive
        # shell) hands its children SIGINT ignored, and Python then keeps it ignored.
        proc = subprocess.Popen(command(*args, *api("judge", server.base_url)), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while server.calls < KILL_AT:
            assert proc.poll() is None
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        first = server.calls
        second = finish(server, [*args, *api("judge", server.base_url)])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1 and lines[0].startswith("error: interrupted"), stderr
    check(first, second)
