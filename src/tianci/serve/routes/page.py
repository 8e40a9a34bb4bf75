"""The playground page, its three files (a fixed table: no path reaches the file system) and /healthz."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from .. import api
from ..api import ApiError
from ..state import STATIC, state_of

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request):
    return Response(state_of(request).static["index.html"], media_type=STATIC["index.html"])


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str, request: Request):
    static = state_of(request).static
    if name not in static:
        raise ApiError(404, f"no static file {name!r}", "name", "not_found")
    return Response(static[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


@router.get("/healthz", response_model=api.Health)
async def healthz(request: Request):
    st = state_of(request)
    return {"status": "ok", "model": st.model_id, "cipai": st.cipu is not None, "queue": st.scheduler.stats()}
