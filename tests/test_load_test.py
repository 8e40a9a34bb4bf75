"""benchmarks/load_test.py, smoke-tested (1 client, about a second a cell) so that the benchmark cannot
rot: it starts its own `tianci serve`, measures completions and compose, and prints its table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from server_fixtures import build_world, open_world_cipu, start_server, stop_server  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "load_test.py"


def load_script():
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("server-world"))


def rows(out: str) -> list[list[str]]:
    lines = out.strip().split("\n\n")[0].splitlines()
    return [line.split() for line in lines[2:]]


def test_load_test_against_a_server(world, capsys):
    """Guards the benchmark breaking against the server it measures (a changed route, stream or
    usage shape): both kinds measured with tokens counted, no errors, the table printed."""
    from tianci.serve.app import create_app
    from tianci.serve.limits import Limits

    lt = load_script()
    server, thread, url = start_server(create_app(world["run"], cipu=open_world_cipu(world),
                                                  limits=Limits(max_waiting=16)))
    try:
        rc = lt.main(["--url", url, "--clients", "1", "--duration", "0.5", "--max-tokens", "8",
                      "--cipai", "十六字令"])
    finally:
        stop_server(server, thread)
    out = capsys.readouterr().out
    table = rows(out)
    assert rc == 0 and [r[1] for r in table] == ["completions", "compose"], out
    assert all(float(r[4]) > 0 and r[-1] == "0" for r in table), out  # tokens/s, errors


def test_load_test_server_command_is_one_serve_takes(world):
    """Guards the benchmark's own servers (`tianci serve` subprocesses) failing to start on a flag
    serve does not take -- checked with serve's own parser, without the seconds a start costs."""
    from tianci.cli import build_parser

    lt = load_script()
    args = lt.parser().parse_args(["--run", str(world["run"]), "--threads", "1", "--quantize", "int8",
                                   "--kinds", "completions"])
    extra = [("max-batch 2", 2)] if lt.serve_takes("--max-batch") else []
    for label, max_batch in [*lt.configs(args), *extra]:
        cmd = lt.serve_command(args, max_batch, 8123)
        assert cmd[1:4] == ["-m", "tianci", "serve"]
        parsed = build_parser(cmd[3:]).parse_args(cmd[3:])
        assert parsed.port == 8123 and parsed.no_cipai and parsed.threads == 1
