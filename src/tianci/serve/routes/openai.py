"""/v1: the OpenAI-compatible routes (models, completions; streaming as server-sent events)."""

# no `from __future__ import annotations`: FastAPI must see the body classes built in router()
import secrets
import time

from fastapi import APIRouter, Request

from .. import api
from ..api import ApiError, RequestModels
from ..state import AppState, state_of
from ..stream import Piece, collect, completion_chunks, completion_job, sse_response
from .common import ERRORS, SSE, err
from ...errors import TianciError


def router(models: RequestModels) -> APIRouter:
    r = APIRouter()
    CompletionRequest = models.completion

    @r.get("/v1/models", response_model=api.ModelList)
    async def list_models(request: Request):
        st = state_of(request)
        return {"object": "list", "data": [card(st)]}

    @r.get("/v1/models/{model}", response_model=api.ModelCard, responses={404: err("unknown model")})
    async def model_card(model: str, request: Request):
        st = state_of(request)
        check_model(st, model)
        return card(st)

    @r.post("/v1/completions", response_model=api.Completion,
            responses={200: {"content": SSE}, 404: err("unknown model"), **ERRORS})
    async def completions(req: CompletionRequest, request: Request):
        return await complete(state_of(request), req, request)

    return r


def card(st: AppState) -> dict:
    return {"id": st.model_id, "object": "model", "created": st.created, "owned_by": "tianci"}


def check_model(st: AppState, model: str | None) -> None:
    if model is not None and model != st.model_id:
        raise ApiError(404, f"model {model!r} does not exist; this server serves {st.model_id!r}", "model",
                       "model_not_found")


def sample_options(req, max_tokens: int):
    """An OpenAI request's sampling fields as `generate.SampleOptions` (OpenAI's defaults where they
    are null); max_tokens is the route's own (its field names and defaults differ)."""
    from ...generate import SampleOptions

    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return SampleOptions(max_new_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
                         top_k=req.top_k or None, top_p=req.top_p if req.top_p not in (None, 1) else None,
                         min_p=req.min_p or None, presence_penalty=req.presence_penalty or 0.0,
                         frequency_penalty=req.frequency_penalty or 0.0, seed=req.seed, stop=tuple(stops))


def check_prompt(st: AppState, prompt: str, where: str) -> None:
    """Refuse a prompt the tokenizer cannot encode before anything is queued; `where` is its param."""
    from ...generate import encode_prompt

    try:
        encode_prompt(st.run.tokenizer, prompt)
    except TianciError as e:
        raise ApiError(e.status, e.render("api"), where) from None


async def complete(st: AppState, req, request: Request):
    check_model(st, req.model)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    n = req.n or 1
    if len(prompts) * n > st.limits.max_choices:
        raise ApiError(400, f"n: {len(prompts)} prompt(s) x n={n} = {len(prompts) * n} choices exceeds "
                       f"this server's limit of {st.limits.max_choices}", "n")
    if req.best_of is not None and req.best_of != n:
        raise ApiError(400, f"best_of={req.best_of}: only best_of == n ({n}) is supported", "best_of")
    for i, p in enumerate(prompts):
        check_prompt(st, p, "prompt" if isinstance(req.prompt, str) else f"prompt[{i}]")
    job = completion_job(st.run, st.engine, prompts, n, sample_options(req, 16 if req.max_tokens is None else req.max_tokens))
    cid, now = f"cmpl-{secrets.token_hex(12)}", int(time.time())
    echo = [p for p in prompts for _ in range(n)] if req.echo else None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await sse_response(request, st.scheduler, job, lambda items: completion_chunks(
            items, cid, now, st.model_id, echo, include_usage), done_marker=True)
    texts, reasons = [""] * (len(prompts) * n), ["length"] * (len(prompts) * n)
    ptok = ctok = 0
    async for item in collect(request, st.scheduler, job):
        if isinstance(item, Piece):
            texts[item.index] += item.text
            reasons[item.index] = item.finish_reason or reasons[item.index]
        else:
            ptok, ctok = ptok + item.prompt_tokens, ctok + item.completion_tokens
    choices = [{"text": (echo[i] if echo else "") + t, "index": i, "logprobs": None, "finish_reason": r}
               for i, (t, r) in enumerate(zip(texts, reasons))]
    return {"id": cid, "object": "text_completion", "created": now, "model": st.model_id,
            "choices": choices, "usage": api.usage(ptok, ctok)}
