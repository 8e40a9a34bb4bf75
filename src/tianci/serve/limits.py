"""What keeps `tianci serve` usable as a public demo: caps, a fair work queue, a body-size guard.

Generation is CPU-bound torch work, so it never runs on the event loop: each request becomes a job
that runs in a worker thread, and the jobs' rows are decoded together by the app's one batched
engine (`tianci.engine`, `max_batch` rows at once; `max_batch` jobs run at a time, 1 gives the old
one-at-a-time behaviour). Jobs wait their turn first-come first-served (asyncio's
Semaphore wakes waiters in FIFO order); when `max_waiting` jobs already wait, a new request is
refused at once with 429 rather than piling up. A job streams its items back through an asyncio
queue; when the client goes away the consumer sets the job's `cancelled` flag, the worker's next
`emit` raises `Cancelled`, the generator is closed, and the slot is released only once the thread
has really stopped (so a cancelled job never overlaps the next one).
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable


@dataclass
class Limits:
    max_tokens: int = 512  # per choice, /v1/completions
    max_prompt_chars: int = 2000
    max_prompts: int = 8  # prompt given as a list
    max_n: int = 4  # choices per prompt
    max_choices: int = 8  # prompts x n
    max_stop: int = 4
    max_stop_chars: int = 32
    max_messages: int = 32  # per /v1/chat/completions request; their contents share max_prompt_chars
    max_body_bytes: int = 64 * 1024
    max_batch: int = 16  # rows decoded together (the engine's KV-cache slots) and jobs running at once
    max_waiting: int = 64  # jobs queued behind the running ones before 429

    def validate(self) -> "Limits":
        from ..errors import TianciError

        for name, lo in (("max_tokens", 1), ("max_prompt_chars", 1), ("max_prompts", 1), ("max_n", 1),
                         ("max_choices", 1), ("max_stop", 0), ("max_stop_chars", 1), ("max_messages", 1),
                         ("max_body_bytes", 256), ("max_batch", 1), ("max_waiting", 0)):
            if getattr(self, name) < lo:
                raise TianciError(f"server limit {name}={getattr(self, name)} must be >= {lo}")
        return self


class Busy(Exception):
    """The wait queue is full; `retry_after` is the seconds until a slot is likely free."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Cancelled(Exception):
    """Raised inside a worker by emit() once the client has gone."""


_ITEM, _END, _ERR = 0, 1, 2


class Scheduler:
    def __init__(self, workers: int = 1, max_waiting: int = 64):
        self.workers, self.max_waiting = workers, max_waiting
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="tianci-gen")
        self._sem: asyncio.Semaphore | None = None
        self._loop = None
        self.waiting = 0
        self.running = 0
        self.served = 0
        self.cancelled = 0
        self.job_seconds = 1.0  # running mean of a job's duration, for Retry-After

    def stats(self) -> dict:
        return {"workers": self.workers, "running": self.running, "waiting": self.waiting,
                "max_waiting": self.max_waiting, "served": self.served, "cancelled": self.cancelled}

    def check_room(self) -> None:
        if self.waiting >= self.max_waiting and self.running >= self.workers:
            # the queue ahead drains at about `workers` jobs per mean job duration
            wait = math.ceil(self.job_seconds * (self.waiting + 1) / self.workers)
            raise Busy(f"the server is busy: {self.waiting} requests are already waiting "
                       f"(max {self.max_waiting}); retry in about {wait} s", retry_after=max(1, wait))

    async def stream(self, work: Callable[[Callable[[Any], None], threading.Event], None]
                     ) -> AsyncIterator[Any]:
        """Run work(emit, cancelled) in a worker thread when a slot is free; yield what it emits.

        An exception raised by work is re-raised here. Use with contextlib.aclosing so that an
        abandoned stream cancels its job promptly."""
        self.check_room()
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # an asyncio.Semaphore belongs to one loop: the server's
            self._sem, self._loop = asyncio.Semaphore(self.workers), loop
        sem = self._sem
        self.waiting += 1
        try:
            await sem.acquire()
        except asyncio.CancelledError:  # the client left while its job was still queued
            self.cancelled += 1
            raise
        finally:
            self.waiting -= 1
        self.running += 1
        q: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def put(msg) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, msg)
            except RuntimeError:  # the loop is closed: the server is shutting down
                cancelled.set()

        def emit(item) -> None:
            if cancelled.is_set():
                raise Cancelled()
            put((_ITEM, item))

        def target() -> None:
            try:
                work(emit, cancelled)
                put((_END, None))
            except Cancelled:
                put((_END, None))
            except BaseException as e:  # handed to the consumer, which decides the response
                put((_ERR, e))

        started = time.monotonic()

        def release(_fut) -> None:
            self.running -= 1
            self.job_seconds = 0.8 * self.job_seconds + 0.2 * (time.monotonic() - started)
            sem.release()

        try:
            fut = loop.run_in_executor(self.executor, target)
        except BaseException:
            release(None)
            raise
        fut.add_done_callback(release)
        finished = False
        try:
            while True:
                kind, val = await q.get()
                if kind == _END:
                    finished = True
                    return
                if kind == _ERR:
                    finished = True
                    raise val
                yield val
        finally:
            if finished:
                self.served += 1
            else:
                self.cancelled += 1
            cancelled.set()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class BodyLimit:
    """ASGI middleware: refuse request bodies over max_bytes with 413 before anything parses them.

    The body is read (up to the cap) and replayed to the app; later receive() calls go to the
    server again so that disconnects are still seen."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        cl = headers.get(b"content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                return await _error(send, 400, "the Content-Length header is not a number", "content-length")
            if n > self.max_bytes:
                return await _too_big(send, self.max_bytes)
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _too_big(send, self.max_bytes)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class SecurityHeaders:
    """ASGI middleware: nosniff and no-referrer on every response, the CSP on the playground page.

    Pure ASGI on purpose: it passes `receive` through untouched, so the app still sees the
    client's disconnect (a BaseHTTPMiddleware would hide it)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        page = scope.get("path") == "/"

        async def send_with_headers(msg):
            if msg["type"] == "http.response.start":
                headers = [(k, v) for k, v in msg.get("headers", [])
                           if k.lower() not in (b"x-content-type-options", b"referrer-policy")]
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if page:
                    headers.append((b"content-security-policy", CSP.encode()))
                msg = {**msg, "headers": headers}
            await send(msg)

        return await self.app(scope, receive, send_with_headers)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None, **extra) -> dict:
    """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
    err = {"message": message, "type": type_, "param": param, "code": code}
    err.update(extra)
    return {"error": err}


async def _error(send, status: int, message: str, param: str | None = None, code: str | None = None):
    body = json.dumps(error_body(message, param=param, code=code), ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _too_big(send, cap: int):
    await _error(send, 413, f"request body too large: the limit is {cap} bytes", "body",
                 "request_too_large")
