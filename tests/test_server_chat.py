"""/v1/chat/completions (tianci.serve.routes.chat, grammar in tianci.serve.chat): a message naming a 词牌
composes through /api/compose's path, anything else continues through /v1/completions' path; the
real `openai` client against a live uvicorn, streaming and not; errors in the OpenAI shape."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

from server_fixtures import build_world, open_world_cipu, start_server, stop_server  # noqa: E402
from tianci.errors import ParameterError  # noqa: E402
from tianci.serve.app import create_app  # noqa: E402
from tianci.serve.chat import ComposeAsk, parse_compose  # noqa: E402
from tianci.serve.limits import Limits  # noqa: E402

LIMITS = dict(max_tokens=64, max_n=3, max_choices=6, max_prompt_chars=200, max_stop=2, max_messages=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("server-world"))


@pytest.fixture(scope="module")
def client(world):
    with TestClient(create_app(world["run"], cipu=open_world_cipu(world), limits=Limits(**LIMITS))) as c:
        yield c


@pytest.fixture(scope="module")
def live(world):
    app = create_app(world["run"], cipu=open_world_cipu(world), limits=Limits(**LIMITS), model_name="tiny")
    server, thread, url = start_server(app)
    yield url
    stop_server(server, thread)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def chat(client, messages, **kw) -> dict:
    r = client.post("/v1/chat/completions", json={"messages": messages, **kw})
    assert r.status_code == 200, r.text
    return r.json()


KNOWN = {"浣溪沙", "水调歌头", "huanxisha"}.__contains__


@pytest.mark.parametrize("text,ask", [
    ("浣溪沙", ComposeAsk("浣溪沙")),
    ("《浣溪沙》", ComposeAsk("浣溪沙")),
    ("huanxisha", ComposeAsk("huanxisha")),
    ("水调歌头 开头:明月", ComposeAsk("水调歌头", start="明月")),
    ("藏头:春花秋月", ComposeAsk(None, acrostic="春花秋月")),
    ("浣溪沙，主题：春；作者:某, 体:1", ComposeAsk("浣溪沙", theme="春", author="某", variant=1)),
    ("浣溪 开头:明月", ComposeAsk("浣溪", start="明月")),  # options: a composition, of an unknown 词牌 (404)
    ("春风", None), ("浣溪沙 春风", None), ("春风: 十里", None), ("浣溪沙 韵:东", None), ("", None),
])
def test_chat_grammar(text, ask):
    """Guards the documented mapping: which messages compose (and with what) and which continue."""
    assert parse_compose(text, KNOWN) == ask


@pytest.mark.parametrize("text,param", [("浣溪沙 开头:", "start"), ("浣溪沙 开头:东 起句:西", "start"),
                                        ("体:1", "variant"), ("浣溪沙 体:一", "variant")])
def test_chat_grammar_errors(text, param):
    """Guards a malformed composition request being continued as text, or failing without its param."""
    with pytest.raises(ParameterError) as e:
        parse_compose(text, KNOWN)
    assert e.value.param == param


def test_chat_composes_through_the_compose_path(client):
    """Guards a second way into 填词: a chat message naming a 词牌 must give the poem /api/compose
    gives for the same request and seed, its content the CLI's `词牌 作者` line then the poem."""
    for msg, body in [("十六字令 作者:某", {"cipai": "十六字令", "author": "某"}),
                      ("如梦令 主题:春", {"cipai": "如梦令", "theme": "春"}),
                      ("十六字令 开头:东", {"cipai": "十六字令", "start": "东"})]:
        a = chat(client, user(msg), seed=5)
        ref = client.post("/api/compose", json={**body, "seed": 5, "stream": False}).json()
        got = a["choices"][0]
        assert got["message"]["content"] == f"{ref['title']} {ref['author']}\n{ref['text']}", msg
        assert got["finish_reason"] == "stop" and a["object"] == "chat.completion" and a["id"].startswith("chatcmpl-")
        assert {**a["compose"][0], "seconds": 0} == {**ref, "seconds": 0}
        assert a["usage"]["completion_tokens"] > len(ref["text"]) and a["usage"]["prompt_tokens"] > 0
    near_greedy = chat(client, user("十六字令 作者:某"), seed=5, temperature=1.5, min_p=0.999)  # min_p reaches it
    ref = client.post("/api/compose", json={"cipai": "十六字令", "author": "某", "temperature": 0, "stream": False}).json()
    assert near_greedy["compose"][0]["text"] == ref["text"]
    two = chat(client, user("十六字令"), seed=5, n=2)
    assert [c["index"] for c in two["choices"]] == [0, 1] and [c["seed"] for c in two["compose"]] == [5, 6]


def test_chat_continues_text(client):
    """Guards a conversation that names no 词牌 not being continued as /v1/completions continues its
    text (every message's content, joined by newlines), or max_tokens / stop being ignored there."""
    msgs = [{"role": "system", "content": "春"}, {"role": "user", "content": [{"type": "text", "text": "风"}]}]
    a = chat(client, msgs, seed=3, max_tokens=8)
    ref = client.post("/v1/completions", json={"prompt": "春\n风", "seed": 3, "max_tokens": 8}).json()
    assert a["choices"][0]["message"]["content"] == ref["choices"][0]["text"] and a["usage"] == ref["usage"]
    assert a["compose"] is None and a["choices"][0]["finish_reason"] == "length"
    text = ref["choices"][0]["text"]
    cut = chat(client, msgs, seed=3, max_completion_tokens=8, stop=[text[3]])["choices"][0]
    assert cut["message"]["content"] == text[:text.index(text[3])] and cut["finish_reason"] == "stop"
    # the last message not the user's: continued even when it names a 词牌
    prefill = chat(client, [*user("春"), {"role": "assistant", "content": "浣溪沙"}], seed=1, max_tokens=4)
    assert prefill["compose"] is None


BAD = [  # (body, status, param)
    ({"messages": []}, 400, "messages"),
    ({"messages": user("春") * 5}, 400, "messages"),
    ({"messages": [{"role": "tool", "content": "春"}]}, 400, "messages[0]"),
    ({"messages": user("春" * 201)}, 400, "messages[0]"),
    ({"messages": user("春" * 150) * 2}, 400, "messages"),
    ({"messages": user("春\u2603")}, 400, "messages[0].content"),
    ({"messages": user("春"), "temperature": 3}, 400, "temperature"),
    ({"messages": user("春"), "min_p": 1.5}, 400, "min_p"),
    ({"messages": user("春"), "logprobs": True}, 400, "logprobs"),
    ({"messages": user("春"), "max_tokens": 65}, 400, "max_tokens"),
    ({"messages": user("春"), "tools": []}, 400, "tools"),
    ({"messages": user("春"), "model": "gpt-4"}, 404, "model"),
    ({"messages": user("浣溪 开头:东")}, 404, "cipai"),
    ({"messages": user("十六字令 开头:水")}, 400, "start"),
    ({"messages": user("十六字令 主题:xyz")}, 400, "theme"),
    ({"messages": user("体:1")}, 400, "variant"),
]


@pytest.mark.parametrize("body,status,param", BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_chat_rejects(client, body, status, param):
    """Guards a bad chat request answered 200/500, or a 4xx without the OpenAI shape and its param."""
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert e["param"] == param and e["message"] and set(e) >= {"message", "type", "param", "code"}


def test_chat_without_cipai_data(world):
    """Guards a server without 词牌 data failing chat: a bare word continues, options answer 503."""
    with TestClient(create_app(world["run"], load_cipu=False)) as c:
        assert chat(c, user("浣溪沙"), max_tokens=2)["compose"] is None
        r = c.post("/v1/chat/completions", json={"messages": user("浣溪沙 开头:东")})
        assert r.status_code == 503 and r.json()["error"]["code"] == "cipai_unavailable"


def test_chat_openai_client(live):
    """Guards answers the real openai library cannot parse (chat, plain and streaming, composing and
    continuing), streamed text differing from the whole answer, or errors it cannot map."""
    openai = pytest.importorskip("openai")
    oc = openai.OpenAI(base_url=live + "/v1", api_key="unused", max_retries=0)
    for msg, kw in [("十六字令 作者:某", {}), ("春风", {"max_tokens": 8})]:
        whole = oc.chat.completions.create(model="tiny", messages=user(msg), seed=5, **kw)
        content = whole.choices[0].message.content
        assert whole.choices[0].message.role == "assistant" and content and whole.usage.total_tokens > 0
        chunks = list(oc.chat.completions.create(model="tiny", messages=user(msg), seed=5, stream=True,
                                                 stream_options={"include_usage": True}, **kw))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert content != "" and whole.choices[0].finish_reason == "length"
    poem = oc.chat.completions.create(model="tiny", messages=user("十六字令"), seed=1)
    assert poem.choices[0].message.content.startswith("十六字令 ") and poem.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        oc.chat.completions.create(model="tiny", messages=user("春"), temperature=5)
    with pytest.raises(openai.NotFoundError, match="浣溪沙"):
        oc.chat.completions.create(model="tiny", messages=user("浣溪 开头:东"))
    with pytest.raises(openai.NotFoundError):
        oc.chat.completions.create(model="gpt-4", messages=user("春"))


def test_chat_in_openapi(client):
    """Guards the chat route or its mapping missing from the schema clients and people read."""
    s = client.get("/openapi.json").json()
    op = s["paths"]["/v1/chat/completions"]["post"]
    assert "开头" in op["description"] and "藏头:春花秋月" in op["description"] and "422" not in op["responses"]
    req = s["components"]["schemas"]["ChatRequest"]
    assert req["required"] == ["messages"] and req["properties"]["messages"]["maxItems"] == LIMITS["max_messages"]
    defaults = {k: v["default"] for k, v in req["properties"].items() if "default" in v}
    for msg in ("春", "十六字令"):  # every documented property is accepted at its default, both ways
        assert client.post("/v1/chat/completions", json={**defaults, "messages": user(msg)}).status_code == 200
