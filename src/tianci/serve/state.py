"""What one `tianci serve` app holds, in one explicit object: the run, the limits and the queue, the 词谱,
the request models built from the limits, the page's files, and the one `Composer` that every 填词
request goes through. Routes find it with `state_of(request)`; nothing is kept in closures."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fastapi import Request

from .api import ApiError, RequestModels
from .limits import Limits, Scheduler

CHOOSE_ANY = 60  # 词牌 tried, most common first, for a chat message that names none
STATIC = {"index.html": "text/html; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "app.js": "text/javascript; charset=utf-8"}


@dataclass
class AppState:
    run: object                 # a loaded checkpoint.Run
    limits: Limits
    scheduler: Scheduler
    engine: object              # the tianci.engine.Engine every job decodes in (started by the first job)
    models: RequestModels       # the request bodies, with this server's caps
    model_id: str
    cipu: object | None         # a ci.cipai.CiPu, or None: the 词牌 routes answer 503
    cipu_error: str | None      # why there is no 词谱 (for that 503)
    static: dict[str, bytes]    # the playground's files, read once from the package
    created: int = field(default_factory=lambda: int(time.time()))
    # The composer is built on first use (its vocabulary tables and clause-end table take a moment)
    # and builds a form's masks on first use too; it is not thread-safe for that, so both happen
    # under this lock (with one worker it is never contended).
    _composer: object | None = field(default=None, init=False)
    _compose_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @classmethod
    def build(cls, run, limits: Limits, cipu, cipu_error: str | None, model_name: str | None) -> "AppState":
        static = {name: (resources.files("tianci.serve") / "static" / name).read_bytes() for name in STATIC}
        from ..engine import Engine

        return cls(run=run, limits=limits, scheduler=Scheduler(limits.max_batch, limits.max_waiting),
                   engine=Engine(run.model, limits.max_batch),
                   models=RequestModels.build(limits), model_id=model_name or Path(run.run_dir).name or "tianci",
                   cipu=cipu, cipu_error=cipu_error, static=static)

    def need_cipu(self):
        if self.cipu is None:
            raise ApiError(503, f"词牌 data is unavailable: {self.cipu_error}", code="cipai_unavailable",
                           type_="service_unavailable")
        return self.cipu

    def composer(self):
        """The one `ci.compose.Composer` of this run (the CLI builds the same one per command). With
        the training poems at hand it has the judge, so a themed request gets the best of
        THEME_CANDIDATES drafts as `tianci compose --theme` does (built once: ~2 s on the ci corpus)."""
        from ..ci.compose import Composer
        from ..ci.judge import Judge

        cp = self.need_cipu()
        with self._compose_lock:
            if self._composer is None:
                judge = Judge.for_run(cp.corpus, self.run.run_dir) if cp.corpus is not None else None
                self._composer = Composer(self.run.tokenizer, cp.phon, cp, judge=judge)
            return self._composer

    def choose(self, cipai: str, variant: int | None, start: str | None, acrostic: str | None):
        """The form a compose request gets: `Composer.choose`, exactly as `tianci compose` picks it
        (with no variant asked for, the first that admits start / acrostic). Its masks are built here,
        under the lock, so the worker only reads them."""
        composer = self.composer()
        with self._compose_lock:
            choice = composer.choose(cipai, variant, start or None, acrostic or None)
            composer.masks(choice.form)
        return choice


    def choose_any(self, start: str | None, acrostic: str | None):
        """For a chat message that names no 词牌: the first of the CHOOSE_ANY most common 词牌
        (`CiPu.listing` order) with a form that admits start / acrostic."""
        from ..ci.fixed import FixedCharsError
        from ..errors import TianciError

        rows = self.need_cipu().listing()[:CHOOSE_ANY]
        for row in rows:
            try:
                return self.choose(row.name, None, start, acrostic)
            except FixedCharsError:
                continue
        param = "acrostic" if acrostic else "start"
        value = acrostic if acrostic else start
        raise TianciError(f"{param} {value!r} fits no form of the {len(rows)} most common 词牌; name one",
                          param=param, allowed=f"what one of the {len(rows)} most common 词牌 admits",
                          hints={"api": "e.g. \"浣溪沙 藏头:春花秋月\" (see GET /api/cipai/{name} for a form)"})


def state_of(request: Request) -> AppState:
    return request.app.state.tianci
