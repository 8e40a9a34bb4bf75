"""The streaming side of `tianci serve`: the jobs that run in the worker thread (sampling, 填词) and
the glue that turns their items into JSON or server-sent events, stopping a job when its client
has gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from fastapi import Request
from fastapi.responses import StreamingResponse

from . import api
from ..errors import TianciError
from .api import ApiError
from .limits import Busy, Scheduler, error_body

DISCONNECT_POLL_S = 0.25


# ----------------------------------------------------------------------------- jobs (worker thread)

def completion_job(run, prompts: list[str], n: int, opts):
    from ..generate import stream

    def work(emit, cancelled):
        for pi, prompt in enumerate(prompts):
            usage: dict = {}
            for ev in stream(run.model, run.tokenizer, prompt, n, opts, usage=usage):
                if ev.text or ev.finished:
                    emit(("ev", pi * n + ev.index, ev.text, ev.finish_reason if ev.finished else None))
            emit(("usage", usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)))
    return work


def compose_job(run, cp, form, req, seed: int):
    from ..ci.compose import compose

    def work(emit, cancelled):
        phase = ["author" if req.author is None else "text"]

        def on_text(piece: str) -> None:
            if phase[0] == "author":
                head, nl, rest = piece.partition("\n")
                if head:
                    emit(("author", head))
                if not nl:
                    return
                phase[0], piece = "text", rest
            if piece:
                emit(("text", piece))

        res = compose(run.model, run.tokenizer, form, start=req.start or None, acrostic=req.acrostic or None,
                      temperature=req.temperature, top_k=req.top_k or None, top_p=req.top_p, seed=seed,
                      author=req.author or None, on_text=on_text, cipu=cp, phon=cp.phon)
        emit(("done", res))
    return work


# ----------------------------------------------------------------------------- streaming glue

def api_error(e: TianciError) -> ApiError:
    """A library error as the API answers it: its own status (4xx: the request; 5xx: this server's
    run or data), its param, its message as written plus the API's hint."""
    type_ = "server_error" if e.status >= 500 else "invalid_request_error"
    return ApiError(e.status, e.render("api"), e.param, type_=type_)


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
            msg = e.render("api") if isinstance(e, TianciError) else f"internal error: {type(e).__name__}"
            yield f"data: {json.dumps(error_body(msg, 'server_error'), ensure_ascii=False)}\n\n"
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
        if item[0] == "ev":
            yield chunk(*item[1:])
        else:
            ptok, ctok = ptok + item[1], ctok + item[2]
    if include_usage:
        yield {"id": cid, "object": "text_completion", "created": created, "model": model_id,
               "choices": [], "usage": api.usage(ptok, ctok)}


async def compose_events(items, info, seed):
    yield {"type": "form", "form": info, "seed": seed}
    async for kind, val in items:
        if kind == "done":
            yield {"type": "done", "result": result_json(val, info, seed)}
        else:
            yield {"type": kind, "text": val}


def result_json(res, info, seed) -> dict:
    return {"cipai": res.form.name, "title": res.title, "author": res.author, "text": res.text,
            "lines": res.lines, "rhyme": res.rhyme, "backoffs": [str(b) for b in res.backoffs],
            "seconds": round(res.seconds, 3), "seed": seed, "form": info}
