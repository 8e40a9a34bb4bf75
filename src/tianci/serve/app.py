"""`tianci serve`: the playground page and an OpenAI-compatible completions API over one run.

    app = create_app("runs/ci-cpu")            # or a loaded checkpoint.Run
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: GET / (playground), GET /v1/models, POST /v1/completions (OpenAI completions, streaming as
server-sent events), GET /api/cipai, GET /api/cipai/{name}, POST /api/compose (streamed), GET
/healthz. Every error has the OpenAI shape {"error": {"message", "type", "param", "code"}}.
Sampling is the shared `tianci.generate.stream`, 填词 the shared `tianci.ci.compose.compose`; both run in
worker threads through the fair queue of `serve.limits.Scheduler`. No route reads or writes a
file the client names: the page's three files are read once at start-up from the package.
"""

import secrets
import time
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import api
from ..errors import TianciError
from .api import ApiError
from .limits import BodyLimit, Limits, Scheduler, SecurityHeaders, error_body
from .stream import (ClientGone, api_error, collect, completion_chunks, completion_job, compose_events, compose_job,
                     result_json, sse_response)

STATIC = {"index.html": "text/html; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "app.js": "text/javascript; charset=utf-8"}


def _err(status: int, desc: str) -> dict:
    return {"model": api.ErrorResponse, "description": desc}


ERRORS = {400: _err(400, "invalid parameter (the message names it and its allowed range)"),
          413: _err(413, "request body too large"), 429: _err(429, "queue full; retry later")}
SSE = {"text/event-stream": {"schema": {"type": "string"}, "description": "when stream is true"}}


def create_app(run, *, cipu=None, load_cipu: bool = True, limits: Limits | None = None,
               model_name: str | None = None, docs: bool = False) -> FastAPI:
    """run: a run directory or a loaded `checkpoint.Run`. cipu: a ready `cipai.CiPu`; None opens the
    run's (词谱 + phonology + the run's corpus) unless load_cipu is False -- then the 词牌 routes
    answer 503 and the rest still works. docs: serve /docs and /redoc -- with the scripts that the
    `fastapi-offline` package ships where it is installed (they work offline), else FastAPI's pages,
    which load them from a CDN; off by default. /openapi.json is always there."""
    from ..checkpoint import Run, load_run

    if not isinstance(run, Run):
        run = load_run(run)
    lim = (limits or Limits()).validate()
    model_id = model_name or Path(run.run_dir).name or "tianci"
    cipu_error = None if cipu is not None else "this server was started without 词牌 data"
    if cipu is None and load_cipu:
        from ..ci.cipai import open_cipu
        try:
            cipu = open_cipu(run_dir=run.run_dir)
        except TianciError as e:
            cipu_error = str(e)
    sched = Scheduler(lim.workers, lim.max_waiting)
    CompletionRequest, ComposeRequest = api.request_models(lim)
    schemas = {"/v1/completions": CompletionRequest.model_json_schema(),
               "/api/compose": ComposeRequest.model_json_schema()}
    static = {name: (resources.files("tianci.serve") / "static" / name).read_bytes() for name in STATIC}
    created = int(time.time())

    from .docs import load_assets
    assets = load_assets() if docs else None  # local Swagger UI / ReDoc when a package ships them
    cdn_docs = docs and assets is None
    app = FastAPI(title="tianci", version=_version(), docs_url="/docs" if cdn_docs else None,
                  redoc_url="/redoc" if cdn_docs else None,
                  description="Song ci (宋词) from a small GPT: an OpenAI-compatible completions API "
                  "and 填词 to a chosen 词牌 with guaranteed form, tone and rhyme.")
    app.state.run, app.state.limits, app.state.scheduler, app.state.cipu = run, lim, sched, cipu
    app.state.model_id = model_id
    app.add_middleware(BodyLimit, max_bytes=lim.max_body_bytes)
    if assets is not None:
        from .docs import add_docs
        add_docs(app, assets)

    # A pure ASGI middleware, not @app.middleware("http"): Starlette's BaseHTTPMiddleware wraps
    # `receive`, and then `request.is_disconnected()` never sees the client leave, so an abandoned
    # non-streaming request would run to its end while the next ones wait.
    app.add_middleware(SecurityHeaders)

    # ------------------------------------------------------------------------- errors
    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def _gone(request, exc: ClientGone):
        return Response(status_code=499)  # nobody reads it: the client closed the request

    @app.exception_handler(TianciError)
    async def _tianci_error(request, exc: TianciError):
        # 4xx when the caller sent something wrong, 5xx when the server's own run or data is at fault
        e = api_error(exc)
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        msg, param = api.describe_validation_error(list(exc.errors()), schemas.get(request.url.path))
        return JSONResponse(error_body(msg, param=param, code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), param=None, code=code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), 500)

    def need_cipu():
        if app.state.cipu is None:
            raise ApiError(503, f"词牌 data is unavailable: {cipu_error}", code="cipai_unavailable",
                           type_="service_unavailable")
        return app.state.cipu

    async def get_form(name: str, variant: int | None):
        from ..ci.cipai import UnknownCipaiError
        cp = need_cipu()
        try:
            return await run_in_threadpool(cp.form, name, variant)
        except UnknownCipaiError as e:
            raise ApiError(404, e.render("api"), e.param or "cipai", "cipai_not_found",
                           suggestions=e.suggestions) from None
        except TianciError as e:
            raise api_error(e) from None

    # ------------------------------------------------------------------------- page
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return Response(static["index.html"], media_type=STATIC["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        if name not in static:  # a fixed table: the path never reaches the file system
            raise ApiError(404, f"no static file {name!r}", "name", "not_found")
        return Response(static[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", response_model=api.Health)
    async def healthz():
        return {"status": "ok", "model": model_id, "cipai": app.state.cipu is not None,
                "queue": sched.stats()}

    # ------------------------------------------------------------------------- OpenAI
    @app.get("/v1/models", response_model=api.ModelList)
    async def models():
        return {"object": "list", "data": [_card(model_id, created)]}

    @app.get("/v1/models/{model}", response_model=api.ModelCard, responses={404: _err(404, "unknown model")})
    async def model_card(model: str):
        _check_model(model, model_id)
        return _card(model_id, created)

    @app.post("/v1/completions", response_model=api.Completion,
              responses={200: {"content": SSE}, 404: _err(404, "unknown model"), **ERRORS})
    async def completions(req: CompletionRequest, request: Request):
        from ..generate import SampleOptions, encode_prompt

        if req.model is not None:
            _check_model(req.model, model_id)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        n = req.n or 1
        if len(prompts) * n > lim.max_choices:
            raise ApiError(400, f"n: {len(prompts)} prompt(s) x n={n} = {len(prompts) * n} choices exceeds "
                           f"this server's limit of {lim.max_choices}", "n")
        if req.best_of is not None and req.best_of != n:
            raise ApiError(400, f"best_of={req.best_of}: only best_of == n ({n}) is supported", "best_of")
        for i, p in enumerate(prompts):
            try:
                encode_prompt(run.tokenizer, p)
            except TianciError as e:
                where = "prompt" if isinstance(req.prompt, str) else f"prompt[{i}]"
                raise ApiError(e.status, f"{where}: {e.render('api')}", where) from None
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        opts = SampleOptions(max_new_tokens=16 if req.max_tokens is None else req.max_tokens,
                             temperature=1.0 if req.temperature is None else req.temperature,
                             top_k=req.top_k or None, top_p=req.top_p if req.top_p not in (None, 1) else None,
                             seed=req.seed, stop=tuple(stops))
        job = completion_job(run, prompts, n, opts)
        cid, now = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        echo = [p for p in prompts for _ in range(n)] if req.echo else None
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return await sse_response(request, sched, job, lambda items: completion_chunks(
                items, cid, now, model_id, echo, include_usage), done_marker=True)
        texts, reasons = [""] * (len(prompts) * n), ["length"] * (len(prompts) * n)
        ptok = ctok = 0
        async for item in collect(request, sched, job):
            if item[0] == "ev":
                _, i, text, reason = item
                texts[i] += text
                reasons[i] = reason or reasons[i]
            else:
                ptok, ctok = ptok + item[1], ctok + item[2]
        choices = [{"text": (echo[i] if echo else "") + t, "index": i, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return {"id": cid, "object": "text_completion", "created": now, "model": model_id,
                "choices": choices, "usage": api.usage(ptok, ctok)}

    # ------------------------------------------------------------------------- 填词
    @app.get("/api/cipai", response_model=api.CipaiList, responses={400: ERRORS[400], 503: _err(503, "no 词牌 data")})
    async def cipai_list(q: str | None = Query(None, max_length=40, description="filter: name, alias or pinyin"),
                         limit: int = Query(2000, ge=1, le=2000),
                         forms: bool = Query(False, description="include each form (then limit <= 50)")):
        cp = need_cipu()
        if forms and limit > 50:
            raise ApiError(400, f"limit={limit}: with forms=true the limit is 1..50", "limit")
        rows = _listing(app, cp)
        if q:
            key = q.strip().lower()
            rows = [r for r in rows if any(key in s.lower() for s in [r["name"], *r["aliases"], *r["pinyin"]])]
        out = [dict(r) for r in rows[:limit]]
        if forms:
            for r in out:
                try:
                    r["form"] = api.form_info(await run_in_threadpool(cp.form, r["name"]))
                except TianciError:
                    r["form"] = None
        return {"total": len(rows), "data": out}

    @app.get("/api/cipai/{name}", response_model=api.FormInfo,
             responses={400: ERRORS[400], 404: _err(404, "unknown 词牌 (with suggestions)"),
                        503: _err(503, "no 词牌 data")})
    async def cipai_form(name: str, variant: int | None = Query(None, ge=0, le=999)):
        if len(name) > 40:
            raise ApiError(400, "name: at most 40 characters", "name")
        return api.form_info(await get_form(name, variant))

    @app.post("/api/compose", response_model=api.ComposeResultModel,
              responses={200: {"content": SSE}, 404: _err(404, "unknown 词牌 (with suggestions)"),
                         503: _err(503, "no 词牌 data"), **ERRORS})
    async def compose_route(req: ComposeRequest, request: Request):
        form = await get_form(req.cipai, req.variant)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        job = compose_job(run, app.state.cipu, form, req, seed)
        info = api.form_info(form)
        if req.stream:
            return await sse_response(request, sched, job, lambda items: compose_events(items, info, seed))
        async for kind, val in collect(request, sched, job):
            if kind == "done":
                return result_json(val, info, seed)
        raise ApiError(503, "the composition was cancelled", type_="server_error")

    app.openapi = lambda: _openapi(app)
    return app


# ----------------------------------------------------------------------------- helpers

def _card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "tianci"}


def _check_model(model: str, model_id: str) -> None:
    if model != model_id:
        raise ApiError(404, f"model {model!r} does not exist; this server serves {model_id!r}", "model",
                       "model_not_found")


def _listing(app: FastAPI, cp) -> list[dict]:
    rows = getattr(app.state, "cipai_rows", None)
    if rows is None:
        rows = [{"name": e.names[0], "aliases": e.names[1:], "source": "词谱" if e.idx is not None else "corpus",
                 "count": cp.count(e), "pinyin": list(dict.fromkeys(p for p in e.pinyins if p))} for e in cp.entries]
        rows.sort(key=lambda r: (-r["count"], r["name"]))
        app.state.cipai_rows = rows
    return rows


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, with its generic 422 replaced by the 400 this server really answers."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in schema.get("paths", {}).values():
        for op in path.values():
            if op.get("responses", {}).pop("422", None) is not None:
                op["responses"].setdefault("400", {
                    "description": "invalid parameter (the message names it and its allowed range)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
    comps = schema.get("components", {}).get("schemas", {})
    comps.pop("HTTPValidationError", None)
    comps.pop("ValidationError", None)
    if "ErrorResponse" not in comps:
        comps["ErrorResponse"] = api.ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        comps.setdefault("ErrorDetail", comps["ErrorResponse"].pop("$defs", {}).get("ErrorDetail", {}))
    app.openapi_schema = schema
    return schema


def _version() -> str:
    from .. import __version__
    return __version__
