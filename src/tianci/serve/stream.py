"""The streaming side of `tianci serve`: the jobs that run in the worker thread (sampling, 填词) and
the glue that turns their items into JSON or server-sent events, stopping a job when its client
has gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from fastapi.responses import StreamingResponse

from . import api
from ..errors import TianciError
from ..sampling import COMPOSE_SAMPLING
from .api import ApiError
from .limits import Busy, Scheduler, error_body

DISCONNECT_POLL_S = 0.25


# ----------------------------------------------------------------------------- stream items

@dataclass(frozen=True)
class Piece:
    """Completion text of choice `index`; `finish_reason` ("stop" | "length") on its last piece."""

    index: int
    text: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class UsageCount:
    """Tokens of one prompt's choices, sent once each prompt is done."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ComposeText:
    """A piece of composition `index`: the model-written author's name, or the poem."""

    kind: Literal["author", "text"]
    text: str
    index: int = 0


@dataclass(frozen=True)
class ComposeDone:
    result: object  # the ci.compose.ComposeResult
    note: str = ""  # FormChoice.note: why a variant other than the default was taken
    index: int = 0
    seed: int = 0   # the seed this composition used


@dataclass(frozen=True)
class ComposeParams:
    """One compose request, whichever route it came by (/api/compose, /v1/chat/completions)."""

    cipai: str | None  # None (chat only): the most common 词牌 whose form admits start / acrostic
    seed: int          # composition i uses seed + i, as `tianci compose --num-samples` does
    variant: int | None = None
    start: str | None = None
    acrostic: str | None = None
    theme: str | None = None
    author: str | None = None
    temperature: float = COMPOSE_SAMPLING.temperature
    top_k: int | None = COMPOSE_SAMPLING.top_k
    top_p: float | None = COMPOSE_SAMPLING.top_p
    n: int = 1
    min_p: float | None = COMPOSE_SAMPLING.min_p
    presence_penalty: float = COMPOSE_SAMPLING.presence_penalty
    frequency_penalty: float = COMPOSE_SAMPLING.frequency_penalty


# ----------------------------------------------------------------------------- jobs (worker thread)

def completion_job(run, engine, prompts: list[str], n: int, opts):
    from ..batched import stream

    def work(emit, cancelled):
        engine.start()
        for pi, prompt in enumerate(prompts):
            usage: dict = {}
            for ev in stream(engine, run.tokenizer, prompt, n, opts, usage=usage, cancelled=cancelled):
                if ev.text or ev.finished:
                    emit(Piece(pi * n + ev.index, ev.text, ev.finish_reason if ev.finished else None))
            emit(UsageCount(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)))
    return work


def compose_job(run, engine, composer, choice, p: ComposeParams):
    """Compose p.n poems to `choice` (from `AppState.choose`) with the app's one composer, as `tianci
    compose` does."""
    from ..ci.compose import compose

    def work(emit, cancelled):
        engine.start()
        for i in range(p.n):
            in_author = not p.author  # the model writes the author's name first, up to a newline

            def on_text(piece: str) -> None:
                nonlocal in_author
                if in_author:
                    head, nl, rest = piece.partition("\n")
                    if head:
                        emit(ComposeText("author", head, i))
                    if not nl:
                        return
                    in_author, piece = False, rest
                if piece:
                    emit(ComposeText("text", piece, i))

            res = compose(run.model, run.tokenizer, choice.form, start=p.start or None, acrostic=p.acrostic or None,
                          temperature=p.temperature, top_k=p.top_k or None, top_p=p.top_p,
                          min_p=p.min_p or None, presence_penalty=p.presence_penalty,
                          frequency_penalty=p.frequency_penalty, seed=p.seed + i,
                          author=p.author or None, theme=p.theme or None, on_text=on_text, composer=composer,
                          engine=engine, cancelled=cancelled)
            emit(ComposeDone(res, choice.note, i, p.seed + i))
    return work


# ----------------------------------------------------------------------------- streaming glue

def api_error(e: TianciError) -> ApiError:
    """A library error as the API answers it: its own status (4xx: the request; 5xx: this server's
    run or data), its param and allowed range in their fields, its message as written plus the
    API's hint (never edited)."""
    from ..ci.cipai import UnknownCipaiError

    type_ = "server_error" if e.status >= 500 else "invalid_request_error"
    extra: dict = {"allowed": e.allowed} if e.allowed else {}
    code = None
    if isinstance(e, UnknownCipaiError):
        code, extra["suggestions"] = "cipai_not_found", e.suggestions
    return ApiError(e.status, e.render("api"), e.param, code, type_=type_, **extra)


class ClientGone(Exception):
    """The client disconnected before its job produced anything."""


async def start_job(request: Request, sched: Scheduler, job):
    """Start the job; wait for its first item so that errors still get a proper status code.

    While the job waits for a worker (or for its first item) the client is watched: a request
    whose client left is never started, and one already running is cancelled."""
    agen = sched.stream(job)
    first = asyncio.ensure_future(agen.__anext__())
    try:
        while not first.done():
            await asyncio.wait([first], timeout=DISCONNECT_POLL_S)
            if not first.done() and await request.is_disconnected():
                first.cancel()
                with contextlib.suppress(BaseException):
                    await first
                await agen.aclose()
                raise ClientGone()
        item = first.result()
    except StopAsyncIteration:
        return agen, []
    except Busy as e:
        raise ApiError(429, str(e), code="queue_full", type_="rate_limit_error",
                       headers={"Retry-After": str(e.retry_after)}) from None
    except TianciError as e:
        raise api_error(e) from None
    return agen, [item]


async def job_items(request: Request, agen, head: list):
    """The job's items; stops (cancelling the job) once the client has disconnected."""
    async with contextlib.aclosing(agen):
        for item in head:
            yield item
        last = time.monotonic()
        async for item in agen:
            yield item
            if time.monotonic() - last > DISCONNECT_POLL_S:
                last = time.monotonic()
                if await request.is_disconnected():
                    return


async def collect(request: Request, sched: Scheduler, job):
    agen, head = await start_job(request, sched, job)
    async for item in job_items(request, agen, head):
        yield item


async def sse_response(request: Request, sched: Scheduler, job, render, done_marker: bool = False):
    agen, head = await start_job(request, sched, job)

    async def body():
        try:
            async for obj in render(job_items(request, agen, head)):
                yield f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
        except Exception as e:  # after the headers: report in-band, in the error shape
            body = (api_error(e).body if isinstance(e, TianciError)
                    else error_body(f"internal error: {type(e).__name__}", "server_error"))
            yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
        if done_marker:
            yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def completion_chunks(items, cid, created, model_id, echo, include_usage):
    def chunk(i, text, reason=None):
        return {"id": cid, "object": "text_completion", "created": created, "model": model_id,
                "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": reason}]}
    for i, p in enumerate(echo or []):
        if p:
            yield chunk(i, p)
    ptok = ctok = 0
    async for item in items:
        if isinstance(item, Piece):
            yield chunk(item.index, item.text, item.finish_reason)
        else:
            ptok, ctok = ptok + item.prompt_tokens, ctok + item.completion_tokens
    if include_usage:
        yield {"id": cid, "object": "text_completion", "created": created, "model": model_id,
               "choices": [], "usage": api.usage(ptok, ctok)}


async def compose_events(items, info, seed):
    yield {"type": "form", "form": info, "seed": seed}
    async for item in items:
        if isinstance(item, ComposeDone):
            yield {"type": "done", "result": result_json(item, info)}
        else:
            yield {"type": item.kind, "text": item.text}


def result_json(done: ComposeDone, info) -> dict:
    res = done.result
    return {"cipai": res.form.name, "title": res.title, "author": res.author, "text": res.text,
            "lines": res.lines, "rhyme": res.rhyme, "backoffs": [str(b) for b in res.backoffs],
            "seconds": round(res.seconds, 3), "seed": done.seed, "note": done.note,
            "theme": list(res.theme), "theme_found": res.theme_found, "form": info}
