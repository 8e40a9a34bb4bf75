"""Where data come from (tianci.sources): one fetch-and-cache for the corpus, the 词谱 and the rhyme
tables, served here by a local http.server on 127.0.0.1 (no internet in CI)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tianci import corpus as C
from tianci import sources
from tianci.errors import DataError

REPO = Path(__file__).resolve().parents[1]
ENVS = [s.env for s in sources.SOURCES.values()]


def write_tree(root: Path) -> Path:
    """poetry/ (all 22 宋词 files + 南唐, as upstream has them), cipu/ (one tune), rhyme/ (two tables)."""
    poems = [{"rhythmic": "浣溪沙", "author": "晏殊", "paragraphs": ["一曲新词酒一杯，去年天气旧亭台。"]},
             {"rhythmic": "浣溪沙", "author": "苏轼", "paragraphs": ["山下兰芽短浸溪，松间沙路净无泥。"]}]
    for rel in C.CI_FILES + [C.NANTANG]:
        p = root / "poetry" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(poems if rel.endswith(".0.json") else [], ensure_ascii=False), "utf-8")
    hxs = {"ge_lyu_str": "中仄中平中仄平中平中仄仄平平", "rhyme_pos": [6, 13], "yun_classify": {"0": [6, 13]},
           "ci_sep": ["一曲新词酒一杯", "去年天气旧亭台"], "origin": "一曲新词酒一杯。去年天气旧亭台。"}
    (root / "cipu" / "ci_list").mkdir(parents=True)
    (root / "cipu" / "ci_index.json").write_text(json.dumps(
        [{"idx": 0, "names": ["浣溪沙"], "pinyins": ["huanxisha"], "full": "huanxisha"}], ensure_ascii=False), "utf-8")
    (root / "cipu" / "ci_list" / "cipai_0.json").write_text(json.dumps([hxs], ensure_ascii=False), "utf-8")
    (root / "rhyme").mkdir()
    (root / "rhyme" / "Cilin_Rhyme.json").write_text(json.dumps(
        {"第十部": {"平声": ["杯", "台", "来"], "仄声": ["在"]}}, ensure_ascii=False), "utf-8")
    (root / "rhyme" / "Word_Tune.json").write_text(json.dumps({"曲": "仄", "新": "平"}, ensure_ascii=False), "utf-8")
    return root


class Server:
    """A static file server on 127.0.0.1 that counts the requests it answers."""

    def __init__(self, root: Path):
        self.paths: list[str] = []
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path)
                super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh user config and cache folder, and no TIANCI_*_SOURCE variables (as a new shell)."""
    monkeypatch.setenv("TIANCI_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("TIANCI_CACHE_DIR", str(tmp_path / "cache"))
    for env in ENVS:
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(sources, "BACKOFF_S", 0.0)
    return tmp_path


@pytest.fixture
def server(tmp_path):
    s = Server(write_tree(tmp_path / "www"))
    yield s
    s.stop()


def _load_all():
    from tianci.ci.cipai import CiPu
    from tianci.ci.tones import Phonology

    poems = C.load_poems()
    form = CiPu.load().form("浣溪沙")
    phon = Phonology.load(use_pypinyin=False)
    return poems, form, phon


def test_every_source_is_fetched_once_then_works_offline_in_a_new_shell(home, server, monkeypatch):
    """Guards: the 词谱 and rhyme tables downloaded again by every command (no cache, no retries in
    tones.read_json), and a new shell after `make demo` losing the TIANCI_*_SOURCE variables so cipai
    and compose fail offline. Given once by environment variable, each source is cached and remembered."""
    for name in sources.SOURCES:
        monkeypatch.setenv(sources.SOURCES[name].env, f"{server.url}/{name}")
    poems, form, phon = _load_all()
    assert len(poems) == 2 and form.variant == 0 and phon.groups("杯") == {10} and phon.tones("新") == {"平"}
    n = len(server.paths)
    assert n == len(C.CI_FILES) + 1 + 2 + 2  # every file once (ci_index + cipai_0; two rhyme tables)
    assert any("%E5%AE%8B%E8%AF%8D" in p for p in server.paths)  # 宋词/ quoted in the URL
    _load_all()
    assert len(server.paths) == n  # cached: nothing fetched again
    server.stop()  # offline from here on
    for name in sources.SOURCES:
        monkeypatch.delenv(sources.SOURCES[name].env)
    assert sources.resolve("cipu") == (f"{server.url}/cipu", "remembered")
    env = {k: v for k, v in os.environ.items() if k not in ENVS}
    env["PYTHONPATH"] = str(REPO / "src")
    r = subprocess.run([sys.executable, "-m", "tianci", "cipai", "浣溪沙"], capture_output=True, text=True,
                       env=env, cwd=home, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "浣溪沙" in r.stdout and "例: 一曲新词酒一杯" in r.stdout
    r = subprocess.run([sys.executable, "-m", "tianci", "prepare", "--out", str(home / "data"), "--quiet"],
                       capture_output=True, text=True, env=env, cwd=home, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((home / "data" / "meta.json").read_text())["n_poems"] == 2


def test_precedence_flag_env_remembered_upstream(home, tmp_path, monkeypatch):
    """Guards: a remembered source overriding what the user gives now (flag or variable)."""
    assert sources.resolve("rhyme") == (sources.SOURCES["rhyme"].upstream, "upstream")
    sources.remember("rhyme", tmp_path / "old")
    assert sources.resolve("rhyme") == (str((tmp_path / "old").resolve()), "remembered")
    monkeypatch.setenv("TIANCI_RHYME_SOURCE", "/env")
    assert sources.resolve("rhyme") == ("/env", "env")
    assert sources.resolve("rhyme", "/flag") == ("/flag", "flag")


def test_unreachable_or_missing_files_are_one_clear_line(home, server, monkeypatch):
    """Guards: a traceback (or endless retries) when a file is missing upstream or the host is down;
    a failed download leaves nothing half-written in the cache and remembers nothing."""
    with pytest.raises(DataError, match="HTTP 404.*--rhyme-source.*TIANCI_RHYME_SOURCE"):
        sources.read_json("rhyme", "Nope.json", f"{server.url}/rhyme")
    assert server.paths.count("/rhyme/Nope.json") == 1  # a 404 is not retried
    url = f"{server.url}/rhyme"
    server.stop()
    with pytest.raises(DataError, match="could not download.*Cilin_Rhyme.json"):
        sources.read_json("rhyme", "Cilin_Rhyme.json", url)
    assert not list((home / "cache").rglob("*.json")) and sources.remembered() == {}


def test_local_directory_source(home, tmp_path):
    """Guards: a local copy being copied into the cache, or a missing folder giving a raw OSError."""
    root = write_tree(tmp_path / "local")
    assert sources.fetch("cipu", "ci_index.json", root / "cipu") == root / "cipu" / "ci_index.json"
    with pytest.raises(DataError, match="not a directory.*--cipu-source"):
        sources.read_json("cipu", "ci_index.json", tmp_path / "nowhere")
