"""OpenAPI response tables shared by the routers."""

from __future__ import annotations

from .. import api


def err(desc: str) -> dict:
    return {"model": api.ErrorResponse, "description": desc}


ERRORS = {400: err("invalid parameter (the message names it and its allowed range)"),
          413: err("request body too large"), 429: err("queue full; retry later")}
SSE = {"text/event-stream": {"schema": {"type": "string"}, "description": "when stream is true"}}
