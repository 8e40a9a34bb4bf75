"""A tiny, hermetic world for the server tests: a synthetic 词谱 of three tunes, a phonology over
a few dozen characters, a few hundred synthetic poems in those forms, and a GPT trained on them for
20 steps. Built once per test session (cached here, so test_server and test_browser share it)."""

from __future__ import annotations

import json
import random
from pathlib import Path

PING_1 = "东风中空红同通虫龙弓"  # 第一部 平: the rhyme characters
ZE_1 = "动送梦冻洞"
PING_2 = "江窗双邦"
PING = "春花秋山云天年人心烟楼舟"
ZE = "水月雪酒柳晓路草雨柳落"
CILIN = {"第一部": {"平声": list(PING_1), "仄声": list(ZE_1)}, "第二部": {"平声": list(PING_2)}}
TUNES = {c: "平" for c in PING} | {c: "仄" for c in ZE}

# name -> (pinyins, origin skeleton with X for characters); every line-final character rhymes
TUNES_SPEC = {
    "浣溪沙": (["huanxisha", "hxs"], "XXXXXXX，XXXXXXX。XXXXXXX。XXXXXXX，XXXXXXX。XXXXXXX。"),
    "如梦令": (["rumengling", "rml"], "XXXXXX。XXXXXX。XXXXX，XXXXXX。XX。XX。XXXXXX。"),
    "十六字令": (["shiliuziling", "slzl"], "X。XXXXXXX。XXX，XXXXX。"),
}
_CACHE: dict = {}


def _variant(origin: str, rnd: random.Random) -> dict:
    n = origin.count("X")
    rhyme, k = [], 0
    for ch in origin:
        if ch == "X":
            k += 1
        elif ch == "。":
            rhyme.append(k - 1)
    tones = "".join("平" if i in rhyme else rnd.choice("平仄中") for i in range(n))
    return {"ge_lyu_str": tones, "rhyme_pos": rhyme, "yun_classify": {"0": rhyme},
            "ci_sep": [], "origin": origin.replace("X", "花")}


def write_cipu(root: Path) -> dict[str, dict]:
    rnd = random.Random(5)
    (root / "ci_list").mkdir(parents=True, exist_ok=True)
    index, variants = [], {}
    for i, (name, (pys, origin)) in enumerate(TUNES_SPEC.items()):
        index.append({"idx": i, "names": [name], "pinyins": pys, "full": pys[0], "names_trad": [name]})
        variants[name] = v = _variant(origin, rnd)
        (root / "ci_list" / f"cipai_{i}.json").write_text(json.dumps([v], ensure_ascii=False), "utf-8")
    (root / "ci_index.json").write_text(json.dumps(index, ensure_ascii=False), "utf-8")
    return variants


def synthetic_poems(variants: dict, n: int = 300):
    from tianci.corpus import Poem

    rnd = random.Random(7)
    pools = {"平": PING + PING_1, "仄": ZE + ZE_1, "中": PING + ZE}
    poems = []
    for i in range(n):
        name = list(variants)[i % len(variants)]
        v = variants[name]
        text, k = "", 0
        for ch in TUNES_SPEC[name][1]:
            if ch == "X":
                text += rnd.choice(PING_1) if k in v["rhyme_pos"] else rnd.choice(pools[v["ge_lyu_str"][k]])
                k += 1
            else:
                text += ch
        paragraphs = [p + "。" for p in text.split("。") if p]
        poems.append(Poem(name, rnd.choice(["张某", "李某", "王某甲"]), paragraphs))
    return poems


def build_world(root: Path) -> dict:
    """{"data", "run", "cipu_dir", "phon"}; trains ~20 steps (a few seconds on 2 cores)."""
    key = "world"
    if key in _CACHE:
        return _CACHE[key]
    from tianci.config import load_preset, validate
    from tianci.corpus import Corpus, build
    from tianci.ci.tones import Phonology
    from tianci.train import train

    root = Path(root)
    variants = write_cipu(root / "ci_pu")
    world = {"data": root / "data", "run": root / "run", "cipu_dir": root / "ci_pu",
             "phon": Phonology.from_tables(CILIN, TUNES, use_pypinyin=False), "variants": variants}
    if (root / "run" / "latest.json").exists():  # a developer's reused directory
        _CACHE[key] = world
        return world
    poems = synthetic_poems(variants)
    build(Corpus([p.text() for p in poems], "synthetic", poems), root / "data")
    preset = load_preset("layernorm")
    m, t = preset.model, preset.train
    m.block_size, m.n_layer, m.n_embd, m.n_head, m.attn_impl = 128, 1, 32, 2, "sdpa"
    t.max_iters, t.batch_size, t.eval_interval, t.eval_iters, t.warmup_iters = 20, 16, 20, 2, 2
    t.device, t.dtype, t.progress, t.log_interval, t.learning_rate = "cpu", "float32", False, 10, 3e-3
    train(validate(preset), root / "data", root / "run", quiet=True)
    _CACHE[key] = world
    return world


def open_world_cipu(world: dict):
    from tianci.ci.cipai import CiPu
    from tianci.ci.corpus_stats import load_corpus

    return CiPu.load(world["cipu_dir"], load_corpus(world["data"]), world["phon"])


def start_server(app):
    """Run app under uvicorn on a free loopback port in a thread; returns (server, thread, base_url)."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def stop_server(server, thread) -> None:
    server.should_exit = True
    thread.join(timeout=10)
