"""`tianci serve` (tianci.serve.app): every route, error and limit in-process; the OpenAPI schema against
the behaviour; the real `openai` client against a live uvicorn; queueing, 429 and disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

from server_fixtures import build_world, open_world_cipu, start_server, stop_server  # noqa: E402
from tianci.serve.app import create_app  # noqa: E402
from tianci.serve.limits import Busy, Limits, Scheduler  # noqa: E402

LIMITS = dict(max_tokens=64, max_n=3, max_choices=6, max_prompts=3, max_prompt_chars=200,
              max_stop=2, max_body_bytes=4096, max_waiting=8)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("server-world"))


@pytest.fixture(scope="session")
def app(world):
    return create_app(world["run"], cipu=open_world_cipu(world), limits=Limits(**LIMITS))


@pytest.fixture(scope="session")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="session")
def live(world):
    lim = Limits(**{**LIMITS, "max_tokens": 5000})  # long enough to still be running at a disconnect
    app = create_app(world["run"], cipu=open_world_cipu(world), limits=lim, model_name="tiny")
    server, thread, url = start_server(app)
    yield url, app
    stop_server(server, thread)


def sse(text: str) -> list:
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def err(r, status: int, param: str | None = "unset") -> dict:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) >= {"message", "type", "param", "code"} and e["message"]
    if param != "unset":
        assert e["param"] == param, e
    return e


# ----------------------------------------------------------------------------- basic routes

def test_health_and_models(client):
    """Guards: /healthz or /v1/models missing fields OpenAI clients read; unknown model not a 404."""
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["cipai"] is True and h["queue"]["workers"] == Limits().max_batch
    m = client.get("/v1/models").json()
    assert m["object"] == "list" and m["data"][0]["object"] == "model" and m["data"][0]["id"] == h["model"]
    assert client.get(f"/v1/models/{h['model']}").json()["id"] == h["model"]
    err(client.get("/v1/models/gpt-4"), 404, "model")
    e = err(client.post("/v1/completions", json={"model": "gpt-4", "prompt": "春"}), 404, "model")
    assert e["code"] == "model_not_found"


def test_completion_shape_usage_and_seed(client):
    """Guards: wrong choice count/indices, usage not counting every choice, seed not reproducible."""
    body = {"prompt": "春风", "max_tokens": 12, "n": 2, "seed": 7, "temperature": 1.0}
    a, b = client.post("/v1/completions", json=body).json(), client.post("/v1/completions", json=body).json()
    assert a["object"] == "text_completion" and a["id"].startswith("cmpl-")
    assert [c["index"] for c in a["choices"]] == [0, 1]
    assert all(c["finish_reason"] == "length" and len(c["text"]) == 12 for c in a["choices"])
    assert a["usage"] == {"prompt_tokens": 4, "completion_tokens": 24, "total_tokens": 28}
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]


def test_penalties_reach_every_route(client, world):
    """Guards presence_penalty / frequency_penalty refused, dropped or counted differently on the way
    through the server: a penalized completion is generate.stream's text for the same options, and a
    penalized composition is the same by /api/compose and by chat, and not the unpenalized poem."""
    from tianci.checkpoint import load_run
    from tianci.generate import SampleOptions, stream

    pen = {"presence_penalty": 1.5, "frequency_penalty": 0.5}
    body = {"prompt": "春风", "max_tokens": 30, "seed": 7, "temperature": 1.0}
    got = client.post("/v1/completions", json={**body, **pen}).json()["choices"][0]["text"]
    plain = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    r = load_run(world["run"])
    ref = "".join(ev.text for ev in stream(r.model, r.tokenizer, "春风", 1,
                                           SampleOptions(max_new_tokens=30, temperature=1.0, seed=7, **pen)))
    assert got == ref and got != plain
    poem = {"cipai": "浣溪沙", "seed": 5, "stream": False}
    a = client.post("/api/compose", json={**poem, **pen}).json()
    b = client.post("/api/compose", json=poem).json()
    c = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "浣溪沙"}], "seed": 5,
                                                  **pen}).json()
    assert a["text"] == c["compose"][0]["text"] and a["text"] != b["text"]


def test_prompt_list_echo_and_stop(client):
    """Guards: list prompts mis-indexed, echo dropped, stop sequences not cut or finish_reason wrong."""
    r = client.post("/v1/completions", json={"prompt": ["春", "秋"], "n": 2, "max_tokens": 3, "echo": True}).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    assert [c["text"][0] for c in r["choices"]] == ["春", "春", "秋", "秋"]
    greedy = client.post("/v1/completions", json={"prompt": "春", "max_tokens": 10, "temperature": 0}).json()
    text = greedy["choices"][0]["text"]
    stop = text[4]
    cut = client.post("/v1/completions", json={"prompt": "春", "max_tokens": 10, "temperature": 0,
                                               "stop": [stop]}).json()["choices"][0]
    assert cut == {"text": text[:text.index(stop)], "index": 0, "logprobs": None, "finish_reason": "stop"}


def test_completion_streaming(client):
    """Guards: SSE chunks not in OpenAI's format, a missing [DONE], streamed text != non-streamed text."""
    body = {"prompt": "春风", "max_tokens": 10, "seed": 3, "n": 2}
    whole = client.post("/v1/completions", json=body).json()
    r = client.post("/v1/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"] == whole["usage"]
    texts = ["", ""]
    for ev in events[:-2]:
        assert ev["object"] == "text_completion" and len(ev["choices"]) == 1
        texts[ev["choices"][0]["index"]] += ev["choices"][0]["text"]
    assert texts == [c["text"] for c in whole["choices"]]
    finals = [ev["choices"][0] for ev in events[:-2] if ev["choices"][0]["finish_reason"]]
    assert sorted(c["index"] for c in finals) == [0, 1]


BAD = [  # (body, param, words the message must hold)
    ({"prompt": "春", "max_tokens": 65}, "max_tokens", "0..64"),
    ({"prompt": "春", "max_tokens": -1}, "max_tokens", "0..64"),
    ({"prompt": "春", "temperature": 2.5}, "temperature", "0..2"),
    ({"prompt": "春", "temperature": "hot"}, "temperature", "number"),
    ({"prompt": "春", "top_p": 0}, "top_p", "(0, 1]"),
    ({"prompt": "春", "top_p": 1.5}, "top_p", "(0, 1]"),
    ({"prompt": "春", "min_p": 1}, "min_p", "[0, 1)"),
    ({"prompt": "春", "min_p": -0.1}, "min_p", "[0, 1)"),
    ({"prompt": "春", "n": 0}, "n", "1..3"),
    ({"prompt": "春", "n": 4}, "n", "1..3"),
    ({"prompt": ["春", "秋", "夏"], "n": 3}, "n", "limit of 6"),
    ({"prompt": "春", "stop": ["a", "b", "c"]}, "stop", "at most 2"),
    ({"prompt": "春", "stop": "x" * 33}, "stop", "32"),
    ({"prompt": "春", "seed": -1}, "seed", "seed"),
    ({"prompt": "春" * 201}, "prompt", "200"),
    ({"prompt": ["春"] * 4}, "prompt", "3"),
    ({"prompt": [1, 2]}, "prompt", "token-id arrays"),
    ({"prompt": "春\u2603"}, "prompt", "vocabulary"),
    ({"prompt": "春", "stream": "yes"}, "stream", "boolean"),
    ({"prompt": "春", "logprobs": 2}, "logprobs", "not supported"),
    ({"prompt": "春", "best_of": 2}, "best_of", "best_of"),
    ({"prompt": "春", "suffix": "了"}, "suffix", "not supported"),
    ({"prompt": "春", "presence_penalty": 2.5}, "presence_penalty", "-2"),
    ({"prompt": "春", "frequency_penalty": -3}, "frequency_penalty", "-2"),
    ({"prompt": "春", "logit_bias": {"1": 5}}, "logit_bias", "not supported"),
    ({"prompt": "春", "temprature": 1}, "temprature", "unknown parameter"),
    ({"max_tokens": 3}, "prompt", "required"),
]


@pytest.mark.parametrize("body,param,words", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_completion_rejects(client, body, param, words):
    """Guards: an out-of-range or hostile parameter accepted, or a 4xx that does not name it."""
    e = err(client.post("/v1/completions", json=body), 400, param)
    assert e["type"] == "invalid_request_error" and words in e["message"] and param.split("[")[0] in e["message"]


def test_bad_bodies(client):
    """Guards: malformed JSON, NaN, non-object bodies and oversized bodies reaching the handler."""
    h = {"content-type": "application/json"}
    err(client.post("/v1/completions", content=b"{bad", headers=h), 400)
    err(client.post("/v1/completions", content=b"[1, 2]", headers=h), 400)
    err(client.post("/v1/completions", content=b'{"prompt": "a", "temperature": NaN}', headers=h), 400, "temperature")
    big = json.dumps({"prompt": "春" * 3000}).encode()
    assert err(client.post("/v1/completions", content=big, headers=h), 413)["code"] == "request_too_large"
    chunks = (big[i:i + 1000] for i in range(0, len(big), 1000))  # no Content-Length: counted as read
    err(client.post("/v1/completions", content=chunks, headers=h), 413)
    err(client.post("/v1/completions", content=b"{}", headers={**h, "content-length": "x"}), 400)


def test_unknown_routes_and_files(client):
    """Guards: framework-shaped errors, or a route serving files named by the client."""
    err(client.get("/nope"), 404)
    err(client.get("/v1/completions"), 405)
    for path in ["/static/../server.py", "/static/..%2fserver.py", "/static/%2e%2e/__init__.py",
                 "/static/index.htm", "/static/presets"]:
        assert client.get(path).status_code == 404, path
    r = client.get("/")
    assert r.status_code == 200 and "填词" in r.text and "default-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200


# ----------------------------------------------------------------------------- 词牌 and 填词

def test_cipai_list_and_form(client, world):
    """Guards: the 词牌 list missing counts/pinyin, search not matching pinyin, forms wrong."""
    lst = client.get("/api/cipai").json()
    assert lst["total"] == 3 and {r["name"] for r in lst["data"]} == {"浣溪沙", "如梦令", "十六字令"}
    assert all(r["count"] == 100 and r["source"] == "词谱" for r in lst["data"])
    assert [r["name"] for r in client.get("/api/cipai", params={"q": "hxs"}).json()["data"]] == ["浣溪沙"]
    withf = client.get("/api/cipai", params={"forms": "true", "limit": 2}).json()["data"]
    assert len(withf) == 2 and all(r["form"]["n_chars"] > 0 for r in withf)
    err(client.get("/api/cipai", params={"forms": "true", "limit": 51}), 400, "limit")
    assert "limit" in err(client.get("/api/cipai", params={"limit": 0}), 400)["message"]
    f = client.get("/api/cipai/rumengling").json()
    assert f["name"] == "如梦令" and f["line_lengths"] == [6, 6, 11, 2, 2, 6] and f["n_chars"] == 33
    assert f["slots"][3] == "●○A。" or f["slots"][3].endswith("A。")
    e = err(client.get("/api/cipai/浣溪"), 404, "cipai")
    assert e["suggestions"] == ["浣溪沙"] and e["code"] == "cipai_not_found"
    err(client.get("/api/cipai/浣溪沙", params={"variant": 3}), 400, "variant")
    err(client.get("/api/cipai/" + "长" * 41), 400, "name")


def chars(line: str) -> int:
    return sum(1 for ch in line if "\u4e00" <= ch <= "\u9fff")


def test_compose_stream_renders_form(client):
    """Guards: the streamed poem differing from the result, or not having the chosen form."""
    r = client.post("/api/compose", json={"cipai": "浣溪沙", "seed": 11, "temperature": 1.0})
    assert r.status_code == 200
    events = sse(r.text)
    assert events[0]["type"] == "form" and events[0]["form"]["name"] == "浣溪沙"
    assert events[-1]["type"] == "done"
    res = events[-1]["result"]
    author = "".join(e["text"] for e in events if e["type"] == "author")
    body = "".join(e["text"] for e in events if e["type"] == "text")
    assert author == res["author"] and 1 <= len(author) <= 4
    assert body.rstrip("\n") == res["text"] and res["lines"] == res["text"].split("\n")
    assert [chars(line) for line in res["lines"]] == events[0]["form"]["line_lengths"]
    assert [("".join("*" if chars(c) else c for c in line)) for line in res["lines"]] == events[0]["form"]["lines"]
    again = client.post("/api/compose", json={"cipai": "浣溪沙", "seed": 11, "temperature": 1.0,
                                              "stream": False}).json()
    assert again["text"] == res["text"] and again["seed"] == 11


def test_compose_options_and_errors(client):
    """Guards: start/acrostic ignored, or their errors returned as 200/500 without naming them."""
    r = client.post("/api/compose", json={"cipai": "十六字令", "stream": False, "author": "某",
                                          "start": "东", "seed": 1}).json()
    assert r["text"].startswith("东") and r["author"] == "某"
    e = err(client.post("/api/compose", json={"cipai": "十六字令", "start": "水"}), 400, "start")
    assert "平" in e["message"]
    e = err(client.post("/api/compose", json={"cipai": "十六字令", "acrostic": "东风"}), 400, "acrostic")
    assert "acrostic" in e["message"]
    e = err(client.post("/api/compose", json={"cipai": "huanxisa"}), 404, "cipai")
    assert "浣溪沙" in e["suggestions"]
    err(client.post("/api/compose", json={"cipai": "浣溪沙", "temperature": 3}), 400, "temperature")
    err(client.post("/api/compose", json={"cipai": ""}), 400, "cipai")
    err(client.post("/api/compose", json={}), 400, "cipai")


def test_min_p_reaches_the_sampler(client):
    """Guards min_p (llama.cpp's and vLLM's extension field) accepted and then dropped on the way to the
    sampler: at 0.999 only the likeliest token survives, so a hot seeded sample is the greedy one, on
    /v1/completions and on /api/compose (through the constrained decoder and the batched engine)."""
    def text(body: dict) -> str:
        r = client.post("/v1/completions", json={"prompt": "春", "max_tokens": 12, **body}).json()
        return r["choices"][0]["text"]
    assert text({"temperature": 1.5, "seed": 1}) != text({"temperature": 0})  # hot is not greedy by itself
    assert {text({"temperature": 1.5, "min_p": 0.999, "seed": s}) for s in (1, 2)} == {text({"temperature": 0})}

    def poem(body: dict) -> str:
        return client.post("/api/compose", json={"cipai": "浣溪沙", "author": "某", "stream": False, **body}).json()["text"]
    greedy = poem({"temperature": 0, "seed": 1})
    assert {poem({"temperature": 1.5, "min_p": 0.999, "seed": s}) for s in (1, 2)} == {greedy}
    err(client.post("/api/compose", json={"cipai": "浣溪沙", "min_p": 1}), 400, "min_p")


def test_without_cipai_data(world):
    """Guards: a server without the 词谱 crashing, instead of 503 on 词牌 routes and working completions."""
    with TestClient(create_app(world["run"], load_cipu=False)) as c:
        assert err(c.get("/api/cipai"), 503)["code"] == "cipai_unavailable"
        err(c.post("/api/compose", json={"cipai": "浣溪沙"}), 503)
        assert c.post("/v1/completions", json={"prompt": "春", "max_tokens": 2}).status_code == 200


# ----------------------------------------------------------------------------- OpenAPI vs behaviour

def test_openapi_matches_behaviour(client):
    """Guards: a schema documenting 422s the server never sends, wrong required fields or caps."""
    s = client.get("/openapi.json").json()
    assert set(s["paths"]) == {"/healthz", "/v1/models", "/v1/models/{model}", "/v1/completions",
                               "/v1/chat/completions",
                               "/api/cipai", "/api/cipai/{name}", "/api/compose"}
    comps = s["components"]["schemas"]
    assert comps["CompletionRequest"]["required"] == ["prompt"] and comps["ComposeRequest"]["required"] == ["cipai"]
    for path, ops in s["paths"].items():
        for op in ops.values():
            assert "422" not in op["responses"], path
            for code, resp in op["responses"].items():
                if code != "200":
                    assert resp["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    cap = int(comps["CompletionRequest"]["properties"]["max_tokens"]["anyOf"][0]["maximum"])
    assert cap == LIMITS["max_tokens"]
    assert client.post("/v1/completions", json={"prompt": "", "max_tokens": cap}).status_code == 200
    err(client.post("/v1/completions", json={"prompt": "", "max_tokens": cap + 1}), 400, "max_tokens")
    # every documented property is accepted at its default; a required one missing is named
    defaults = {k: v.get("default") for k, v in comps["ComposeRequest"]["properties"].items() if "default" in v}
    assert client.post("/api/compose", json={"cipai": "十六字令", **defaults, "stream": False}).status_code == 200
    props = comps["CompletionRequest"]["properties"]
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    assert client.post("/v1/completions", json={"prompt": "春", **defaults}).status_code == 200


# ----------------------------------------------------------------------------- queueing

def test_scheduler_fifo_busy_and_cancel():
    """Guards: jobs served out of order, an unbounded queue, and a cancelled job holding its slot."""
    async def main():
        sched = Scheduler(workers=1, max_waiting=2)
        order, gate = [], threading.Event()

        def job(name, n=3):
            def work(emit, cancelled):
                gate.wait(5)
                for i in range(n):
                    emit((name, i))
                order.append(name)
            return work

        async def drain(name):
            return [x async for x in sched.stream(job(name))]

        tasks = [asyncio.create_task(drain(n)) for n in "abc"]
        await asyncio.sleep(0.05)
        assert sched.running == 1 and sched.waiting == 2
        with pytest.raises(Busy):
            await sched.stream(job("d")).__anext__()
        gate.set()
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "c"]

        def forever(emit, cancelled):
            while True:
                emit(1)
                time.sleep(0.001)

        agen = sched.stream(forever)
        async with contextlib.aclosing(agen):
            await agen.__anext__()
        for _ in range(200):
            if sched.running == 0:
                break
            await asyncio.sleep(0.01)
        assert sched.running == 0 and sched.cancelled == 1
        assert [x async for x in sched.stream(job("e", 1))] == [("e", 0)]
        sched.shutdown()
    asyncio.run(main())


def test_live_disconnect_frees_slot_and_loop_stays_free(live):
    """Guards: generation blocking the event loop, and a vanished streaming client keeping its slot."""
    import httpx

    url, app = live
    with httpx.Client(base_url=url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json={"prompt": "春", "max_tokens": 5000, "stream": True,
                                                       "temperature": 1.0}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            # answered while a generation is running (a blocked loop would answer only after it)
            assert c.get("/healthz").json()["queue"]["running"] == 1
        for _ in range(500):
            q = c.get("/healthz").json()["queue"]
            if q["running"] == 0:
                break
            time.sleep(0.02)
        assert q["running"] == 0 and q["cancelled"] >= 1


def test_openai_client(live):
    """Guards: responses the real openai library cannot parse (plain and streaming), or errors it can't map."""
    openai = pytest.importorskip("openai")
    url, _ = live
    oc = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in oc.models.list()] == ["tiny"]
    r = oc.completions.create(model="tiny", prompt="春风", max_tokens=8, seed=5, n=2)
    assert len(r.choices) == 2 and all(len(c.text) == 8 for c in r.choices) and r.usage.completion_tokens == 16
    pieces = list(oc.completions.create(model="tiny", prompt="春风", max_tokens=8, seed=5, stream=True))
    one = oc.completions.create(model="tiny", prompt="春风", max_tokens=8, seed=5).choices[0].text
    assert "".join(p.choices[0].text for p in pieces if p.choices) == one
    assert pieces[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        oc.completions.create(model="tiny", prompt="春", temperature=5)
    with pytest.raises(openai.NotFoundError):
        oc.completions.create(model="gpt-4", prompt="春")


def test_live_abandoned_non_streaming_requests_are_cancelled(live):
    """Guards: a non-streaming request whose client left running to its end (the http middleware
    hid the disconnect), and a queued request whose client left being started at all."""
    import httpx

    url, app = live
    body = {"prompt": "春", "max_tokens": 5000, "temperature": 1.0}  # far longer than the clients wait

    def leave_early():
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(url + "/v1/completions", json=body, timeout=0.5)

    before = app.state.tianci.scheduler.stats()
    clients = [threading.Thread(target=leave_early) for _ in range(3)]  # one runs, two wait
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(1500):
            q = c.get("/healthz").json()["queue"]
            if q["running"] == 0 and q["waiting"] == 0:
                break
            time.sleep(0.02)
        assert q["running"] == 0 and q["waiting"] == 0, q
        # none of the three ran to its end: the running one was stopped, the queued ones never began
        assert q["cancelled"] - before["cancelled"] == 3 and q["served"] == before["served"], q
        r = c.post("/v1/completions", json={"prompt": "春", "max_tokens": 4, "seed": 1})
        assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 4
        assert c.get("/healthz").json()["queue"]["served"] == before["served"] + 1


def test_busy_answers_retry_after():
    """Guards: a 429 without Retry-After, which leaves clients to guess when to come back."""
    from tianci.serve.limits import Busy, Scheduler

    sched = Scheduler(workers=1, max_waiting=0)
    sched.running = 1  # one job holds the only worker and nobody may wait
    with pytest.raises(Busy) as e:
        sched.check_room()
    assert e.value.retry_after >= 1 and "retry in about" in str(e.value)


def test_server_fault_is_5xx_and_docs_off_by_default(world):
    """Guards: the server blaming the client (400) for a fault of its own run, and /docs pages that
    load their scripts from a CDN (blank offline) being on by default."""
    from fastapi.testclient import TestClient

    from tianci.errors import RunError

    app = create_app(world["run"], cipu=open_world_cipu(world), limits=Limits(**LIMITS), model_name="tiny")

    @app.get("/boom")
    async def boom():
        raise RunError("best.safetensors holds non-finite weights", param="run")

    with TestClient(app) as c:
        r = c.get("/boom")
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "non-finite" in r.json()["error"]["message"]
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 200
    app2 = create_app(world["run"], load_cipu=False, limits=Limits(**LIMITS), docs=True)
    with TestClient(app2) as c:
        assert c.get("/docs").status_code == 200


class _BrokenModel:
    """A model whose forward fails the way a broken run does (RunError) or a bug does."""

    def __init__(self, exc):
        import torch
        self.exc, self.p = exc, torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self.p])

    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, *a, **k):
        raise self.exc


@pytest.mark.parametrize("exc,words", [("run", "weights"), ("bug", "IndexError")])
def test_server_faults_are_5xx_with_a_message(world, exc, words):
    """Guards: a fault of the server's own run (RunError) or an unexpected exception answered as
    400, blaming the client, or as a bare 500 without saying what failed."""
    from tianci.checkpoint import load_run
    from tianci.errors import RunError

    run = load_run(world["run"])
    run.model = _BrokenModel(RunError("the run's weights are not finite") if exc == "run"
                             else IndexError("index 7 is out of bounds"))
    with TestClient(create_app(run, load_cipu=False), raise_server_exceptions=False) as c:
        for stream in (False, True):
            r = c.post("/v1/completions", json={"prompt": "春", "max_tokens": 2, "stream": stream})
            e = err(r, 500)
            assert e["type"] == "server_error" and words in e["message"]


def test_docs_work_offline(world):
    """Guards: /docs and /redoc (with --docs) loading Swagger UI / ReDoc from a CDN (blank pages offline)."""
    pytest.importorskip("fastapi_offline")
    client = TestClient(create_app(world["run"], load_cipu=False, docs=True))
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = client.get(page).text
        assert f"/docs-assets/{asset}" in html and "cdn" not in html.lower() and "googleapis" not in html
        js = client.get(f"/docs-assets/{asset}")
        assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/docs-assets/../app.py").status_code == 404


def test_concurrent_requests_share_batches_and_keep_their_seeded_text(world):
    """Guards continuous batching in the server (issue 15): concurrent completions and a
    composition decoded in one engine's batches (more than one row at once, the KV cache holding
    --max-batch rows), each seeded request with the text it gets at --max-batch 1."""
    import httpx

    bodies = [("/v1/completions", {"prompt": p, "max_tokens": 40, "seed": i, "temperature": 1.0, "n": 1 + i % 2})
              for i, p in enumerate(["春", "秋风", "花", ""])] + [("/api/compose", {"cipai": "浣溪沙", "seed": 3, "stream": False})]
    got = {}
    for max_batch in (4, 1):
        app = create_app(world["run"], cipu=open_world_cipu(world),
                         limits=Limits(**{**LIMITS, "max_tokens": 5000, "max_batch": max_batch}))
        server, thread, url = start_server(app)
        out: list = [None] * len(bodies)

        def post(i):
            out[i] = httpx.post(url + bodies[i][0], json=bodies[i][1], timeout=120).json()
        try:
            if max_batch == 1:  # one at a time: the reference texts
                for i in range(len(bodies)):
                    post(i)
            else:
                with httpx.Client(base_url=url, timeout=60) as c:
                    # a long request holds a row while the others arrive, so they really share batches
                    with c.stream("POST", "/v1/completions", json={"prompt": "春", "max_tokens": 5000,
                                                                   "stream": True}) as r:
                        next(r.iter_lines())
                        posts = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
                        for t in posts:
                            t.start()
                        for t in posts:
                            t.join()
        finally:
            stop_server(server, thread)
        engine = app.state.tianci.engine
        got[max_batch] = [[c["text"] for c in o["choices"]] if "choices" in o else o["text"] for o in out]
        assert engine.cache.k.shape[1] == max_batch and engine.stats.peak_active == max_batch
    assert got[4] == got[1] and all(got[4])
