"""/v1/chat/completions: OpenAI's chat schema over what tianci does. A last user message that names
a 词牌 (the grammar of `serve.chat`) composes through the path /api/compose takes (`cipai.compose_start`:
`Composer.choose`, the app's composer); any other conversation is continued through the sampler
/v1/completions uses. A composition's content is the CLI's output: `词牌 作者` on the first line,
then the poem."""

# no `from __future__ import annotations`: FastAPI must see the body class built in router()
import secrets
import time
from dataclasses import dataclass

from fastapi import APIRouter, Request

from .. import api, chat as grammar
from ..api import ApiError, RequestModels
from ..state import AppState, state_of
from ..stream import ComposeDone, ComposeParams, Piece, UsageCount, collect, completion_job, result_json, sse_response
from .cipai import compose_start, random_seed
from .common import ERRORS, SSE, err
from .openai import check_model, check_prompt, sample_options
from ...sampling import COMPOSE_SAMPLING

DESCRIPTION = ("OpenAI chat completions, streaming as server-sent events. When the last message is the "
               "user's and reads as `[词牌] (key:value)*` it composes: the content is `词牌 作者` then the poem, "
               "`compose` in the answer holds each poem's /api/compose result, and max_tokens and stop do not "
               "apply (a poem is its whole form). Else every message's content, joined by newlines, is "
               "continued.\n\n" + grammar.__doc__)


def router(models: RequestModels) -> APIRouter:
    r = APIRouter()
    ChatRequest = models.chat

    @r.post("/v1/chat/completions", response_model=api.ChatCompletion, description=DESCRIPTION,
            responses={200: {"content": SSE}, 404: err("unknown model, or unknown 词牌 (with suggestions)"),
                       503: err("no 词牌 data (for a message with key:value parts)"), **ERRORS})
    async def chat_completions(req: ChatRequest, request: Request):
        return await chat(state_of(request), req, request)

    return r


@dataclass(frozen=True)
class Delta:
    """Content for choice `index`; `finish_reason` on its last; `compose`: a composition's result."""

    index: int
    content: str = ""
    finish_reason: str | None = None
    compose: dict | None = None


def is_cipai(st: AppState, name: str) -> bool:
    from ...ci.cipai import UnknownCipaiError

    if st.cipu is None:
        return False  # without 词牌 data a bare word is text to continue
    try:
        st.cipu.resolve(name)
        return True
    except UnknownCipaiError:
        return False


async def chat(st: AppState, req, request: Request):
    check_model(st, req.model)
    texts = [grammar.content_text(m.content) for m in req.messages]
    if sum(map(len, texts)) > st.limits.max_prompt_chars:
        raise ApiError(400, f"messages: their contents hold {sum(map(len, texts))} characters; this server's "
                       f"limit is {st.limits.max_prompt_chars}", "messages")
    n = req.n or 1
    ask = grammar.parse_compose(texts[-1], lambda name: is_cipai(st, name)) if req.messages[-1].role == "user" else None
    if ask is not None:
        S = COMPOSE_SAMPLING  # a null field composes with composing's defaults, not OpenAI's
        p = ComposeParams(ask.cipai, random_seed() if req.seed is None else req.seed, ask.variant, ask.start,
                          ask.acrostic, ask.theme, ask.author, n=n,
                          temperature=S.temperature if req.temperature is None else req.temperature,
                          top_k=S.top_k if req.top_k is None else req.top_k,
                          top_p=S.top_p if req.top_p is None else req.top_p,
                          min_p=S.min_p if req.min_p is None else req.min_p,
                          presence_penalty=S.presence_penalty if req.presence_penalty is None else req.presence_penalty,
                          frequency_penalty=S.frequency_penalty if req.frequency_penalty is None
                          else req.frequency_penalty)
        choice, job = await compose_start(st, p)
        info = api.form_info(choice.form)

        def deltas(items):
            return compose_deltas(items, choice.form.title, ask.author, info)
    else:
        for i, text in enumerate(texts):
            check_prompt(st, text, f"messages[{i}].content")
        max_tokens = next((m for m in (req.max_completion_tokens, req.max_tokens) if m is not None),
                          min(api.CHAT_MAX_TOKENS, st.limits.max_tokens))
        job = completion_job(st.run, st.engine, ["\n".join(texts)], n, sample_options(req, max_tokens))
        deltas = text_deltas
    cid, now = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await sse_response(request, st.scheduler, job, lambda items: chat_chunks(
            deltas(items), cid, now, st.model_id, n, include_usage), done_marker=True)
    contents, reasons, composed = [""] * n, ["length"] * n, [None] * n
    ptok = ctok = 0
    async for d in deltas(collect(request, st.scheduler, job)):
        if isinstance(d, UsageCount):
            ptok, ctok = ptok + d.prompt_tokens, ctok + d.completion_tokens
            continue
        contents[d.index] += d.content
        reasons[d.index] = d.finish_reason or reasons[d.index]
        composed[d.index] = d.compose or composed[d.index]
    out = {"id": cid, "object": "chat.completion", "created": now, "model": st.model_id,
           "choices": [{"index": i, "message": {"role": "assistant", "content": c}, "logprobs": None,
                        "finish_reason": r} for i, (c, r) in enumerate(zip(contents, reasons))],
           "usage": api.usage(ptok, ctok)}
    if ask is not None:
        out["compose"] = composed
    return out


async def text_deltas(items):
    async for item in items:
        if not isinstance(item, Piece):
            yield item  # UsageCount
            continue
        if item.text:
            yield Delta(item.index, item.text)
        if item.finish_reason:
            yield Delta(item.index, "", item.finish_reason)


async def compose_deltas(items, title: str, author: str | None, info: dict):
    """A composition as content: `title author` then a newline then the poem, exactly the result's
    text: the poem's closing newline is held back (a newline goes out only once text follows it)."""
    in_poem, held = set(), {}
    async for item in items:
        i = item.index
        if isinstance(item, ComposeDone):
            res = item.result
            yield Delta(i, "", "stop", result_json(item, info))
            yield UsageCount(res.prompt_tokens, len(res.tokens))
            continue
        if i not in held:  # the first piece of poem i: the title line first
            held[i] = ""
            yield Delta(i, f"{title} " + (f"{author}\n" if author else ""))
            if author:
                in_poem.add(i)
        text = item.text
        if item.kind == "text" and i not in in_poem:
            in_poem.add(i)
            text = "\n" + text  # the newline that ended the model-written author
        text = held[i] + text
        body = text.rstrip("\n")
        held[i] = text[len(body):]
        if body:
            yield Delta(i, body)


async def chat_chunks(deltas, cid: str, created: int, model_id: str, n: int, include_usage: bool):
    def chunk(i, delta, reason=None, **extra):
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}], **extra}

    for i in range(n):
        yield chunk(i, {"role": "assistant", "content": ""})
    ptok = ctok = 0
    async for d in deltas:
        if isinstance(d, UsageCount):
            ptok, ctok = ptok + d.prompt_tokens, ctok + d.completion_tokens
            continue
        if d.content:
            yield chunk(d.index, {"content": d.content})
        if d.finish_reason:
            yield chunk(d.index, {}, d.finish_reason, **({"compose": d.compose} if d.compose else {}))
    if include_usage:
        yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
               "choices": [], "usage": api.usage(ptok, ctok)}
