"""`tianci serve`: the playground page and an OpenAI-compatible completions API over one run.

    app = create_app("runs/ci-cpu")            # or a loaded checkpoint.Run
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes (in `serve.routes`): GET / (playground), GET /v1/models, POST /v1/completions (OpenAI
completions, streaming as server-sent events), POST /v1/chat/completions (OpenAI chat: a message
naming a 词牌 composes, see `serve.chat`; any other is continued), GET /api/cipai, GET /api/cipai/{name}, POST
/api/compose (streamed), GET /healthz. Every error has the OpenAI shape {"error": {"message", "type",
"param", "code"}} (plus "allowed" and "suggestions" where the library error carries them).
Sampling is `tianci.batched.stream`, 填词 `tianci.ci.compose.compose`, both decoded together in the
app's one batched engine (`tianci.engine`) from worker threads behind the fair queue of
`serve.limits.Scheduler`. What the app holds is one `serve.state.AppState` (app.state.tianci). No route reads or writes a file the client names: the
page's three files are read once at start-up from the package.
"""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import api, routes
from ..errors import TianciError
from .api import ApiError
from .limits import BodyLimit, Limits, SecurityHeaders, error_body
from .state import AppState, state_of
from .stream import ClientGone, api_error

DESCRIPTION = ("Song ci (宋词) from a small GPT: OpenAI-compatible completions and chat completions "
               "(a chat message naming a 词牌 composes), and 填词 to a chosen 词牌 with guaranteed form, "
               "tone and rhyme.")


def create_app(run, *, cipu=None, load_cipu: bool = True, limits: Limits | None = None,
               model_name: str | None = None, docs: bool = False) -> FastAPI:
    """run: a run directory or a loaded `checkpoint.Run`. cipu: a ready `cipai.CiPu`; None opens the
    run's (词谱 + phonology + the run's corpus) unless load_cipu is False -- then the 词牌 routes
    answer 503 and the rest still works. docs: serve /docs and /redoc -- with the scripts that the
    `fastapi-offline` package ships where it is installed (they work offline), else FastAPI's pages,
    which load them from a CDN; off by default. /openapi.json is always there."""
    from ..checkpoint import Run, load_run
    from .docs import add_docs, load_assets

    if not isinstance(run, Run):
        run = load_run(run)
    lim = (limits or Limits()).validate()
    cipu_error = None if cipu is not None else "this server was started without 词牌 data"
    if cipu is None and load_cipu:
        from ..ci.cipai import open_cipu
        try:
            cipu = open_cipu(run_dir=run.run_dir)
        except TianciError as e:
            cipu_error = str(e)
    st = AppState.build(run, lim, cipu, cipu_error, model_name)

    assets = load_assets() if docs else None  # local Swagger UI / ReDoc when a package ships them
    cdn_docs = docs and assets is None
    app = FastAPI(title="tianci", version=_version(), description=DESCRIPTION,
                  docs_url="/docs" if cdn_docs else None, redoc_url="/redoc" if cdn_docs else None)
    app.state.tianci = st
    app.add_middleware(BodyLimit, max_bytes=lim.max_body_bytes)
    # A pure ASGI middleware, not @app.middleware("http"): Starlette's BaseHTTPMiddleware wraps
    # `receive`, and then `request.is_disconnected()` never sees the client leave, so an abandoned
    # non-streaming request would run to its end while the next ones wait.
    app.add_middleware(SecurityHeaders)
    for exc, handler in HANDLERS.items():
        app.add_exception_handler(exc, handler)
    if assets is not None:
        add_docs(app, assets)
    app.include_router(routes.page.router)
    app.include_router(routes.openai.router(st.models))
    app.include_router(routes.chat.router(st.models))
    app.include_router(routes.cipai.router(st.models))
    app.openapi = lambda: _openapi(app)
    return app


# ----------------------------------------------------------------------------- errors

async def _api_error(request: Request, exc: ApiError):
    return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)


async def _gone(request: Request, exc: ClientGone):
    return Response(status_code=499)  # nobody reads it: the client closed the request


async def _tianci_error(request: Request, exc: TianciError):
    # 4xx when the caller sent something wrong, 5xx when the server's own run or data is at fault
    e = api_error(exc)
    return JSONResponse(e.body, status_code=e.status)


async def _invalid(request: Request, exc: RequestValidationError):
    schema = state_of(request).models.schema(request.url.path)
    msg, param = api.describe_validation_error(list(exc.errors()), schema)
    return JSONResponse(error_body(msg, param=param, code="invalid_value"), status_code=400)


async def _http(request: Request, exc: StarletteHTTPException):
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(error_body(str(exc.detail), param=None, code=code), status_code=exc.status_code)


async def _crash(request: Request, exc: Exception):
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), 500)


HANDLERS = {ApiError: _api_error, ClientGone: _gone, TianciError: _tianci_error,
            RequestValidationError: _invalid, StarletteHTTPException: _http, Exception: _crash}


# ----------------------------------------------------------------------------- helpers

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
