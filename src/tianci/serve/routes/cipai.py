"""/api: the 词牌 listing, one form, and 填词 (streamed), through the same `CiPu.listing` and
`Composer.choose` as `tianci cipai --list` and `tianci compose`."""

# no `from __future__ import annotations`: FastAPI must see the body classes built in router()
import dataclasses
import secrets

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from .. import api
from ..api import ApiError, RequestModels
from ..state import AppState, state_of
from ..stream import (ComposeDone, ComposeParams, api_error, collect, compose_events, compose_job, result_json,
                      sse_response)
from .common import ERRORS, SSE, err
from ...errors import TianciError

NO_CIPU = {503: err("no 词牌 data")}


def router(models: RequestModels) -> APIRouter:
    r = APIRouter()
    ComposeRequest = models.compose

    @r.get("/api/cipai", response_model=api.CipaiList, responses={400: ERRORS[400], **NO_CIPU})
    async def cipai_list(request: Request,
                         q: str | None = Query(None, max_length=40, description="filter: name, alias or pinyin"),
                         limit: int = Query(2000, ge=1, le=2000),
                         forms: bool = Query(False, description="include each form (then limit <= 50)")):
        return await listing(state_of(request), q, limit, forms)

    @r.get("/api/cipai/{name}", response_model=api.FormInfo,
           responses={400: ERRORS[400], 404: err("unknown 词牌 (with suggestions)"), **NO_CIPU})
    async def cipai_form(name: str, request: Request, variant: int | None = Query(None, ge=0, le=999)):
        if len(name) > 40:
            raise ApiError(400, "name: at most 40 characters", "name")
        return api.form_info(await in_thread(state_of(request).need_cipu().form, name, variant))

    @r.post("/api/compose", response_model=api.ComposeResultModel,
            responses={200: {"content": SSE}, 404: err("unknown 词牌 (with suggestions)"), **NO_CIPU, **ERRORS})
    async def compose_route(req: ComposeRequest, request: Request):
        return await compose(state_of(request), req, request)

    return r


async def in_thread(fn, *args):
    """fn(*args) off the event loop (a 词谱 file may be read); its TianciError as the API answers it."""
    try:
        return await run_in_threadpool(fn, *args)
    except TianciError as e:
        raise api_error(e) from None


async def listing(st: AppState, q: str | None, limit: int, forms: bool) -> dict:
    cp = st.need_cipu()
    if forms and limit > 50:
        raise ApiError(400, f"limit={limit}: with forms=true the limit is 1..50", "limit")
    rows = cp.listing()
    if q:
        key = q.strip().lower()
        rows = [r for r in rows if any(key in s.lower() for s in [r.name, *r.aliases, *r.pinyin])]
    out = [dataclasses.asdict(r) for r in rows[:limit]]
    if forms:
        for r in out:
            try:
                r["form"] = api.form_info(await run_in_threadpool(cp.form, r["name"]))
            except TianciError:
                r["form"] = None
    return {"total": len(rows), "data": out}


async def compose_start(st: AppState, p: ComposeParams):
    """(choice, job): the form from `AppState.choose` (or, for a chat message naming no 词牌,
    `AppState.choose_any`), the poems from the app's composer. The one way into 填词 for every route."""
    if p.cipai is None:
        choice = await in_thread(st.choose_any, p.start, p.acrostic)
    else:
        choice = await in_thread(st.choose, p.cipai, p.variant, p.start, p.acrostic)
    return choice, compose_job(st.run, st.engine, st.composer(), choice, p)


def random_seed() -> int:
    return secrets.randbelow(2**31)


async def compose(st: AppState, req, request: Request):
    """One composition, streamed or whole."""
    seed = req.seed if req.seed is not None else random_seed()
    p = ComposeParams(req.cipai, seed, req.variant, req.start, req.acrostic, req.theme, req.author,
                      req.temperature, req.top_k, req.top_p, min_p=req.min_p,
                      presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty)
    choice, job = await compose_start(st, p)
    info = api.form_info(choice.form)
    if req.stream:
        return await sse_response(request, st.scheduler, job, lambda items: compose_events(items, info, seed))
    async for item in collect(request, st.scheduler, job):
        if isinstance(item, ComposeDone):
            return result_json(item, info)
    raise ApiError(503, "the composition was cancelled", type_="server_error")
