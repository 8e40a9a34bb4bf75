"""Load test for `tianci serve` (a benchmark script, not a test): a table of tokens/s, requests/s, p50/p99
latency and time to first token, for 1, 4, 16 and 64 concurrent clients, for completions and compose,
for each server configuration, in one run.

    python benchmarks/load_test.py --run runs/ci                 # starts its own servers on loopback
    python benchmarks/load_test.py --run runs/ci --clients 16 --duration 20 --kinds completions
    python benchmarks/load_test.py --url http://127.0.0.1:8000    # or measures a running one

Each client sends streamed requests back to back for --duration seconds (a request under way then
finishes and counts): `completions` is POST /v1/completions (--prompt, --max-tokens); `compose` is POST
/v1/chat/completions with the message --cipai, which composes through /api/compose's path and, unlike
/api/compose, reports the tokens it wrote (`stream_options.include_usage`). Tokens are the server's own
usage counts; time to first token is when the first text arrives. Errors: non-200 answers, in-band
errors, streams without [DONE], transport errors.

With --run, each configuration is a `tianci serve` subprocess on a free loopback port (the load's own
Python never shares the server's interpreter): `--max-batch N` for each N of --max-batch (default: the
server's own batch size and 1, where `tianci serve` has --max-batch; else one default server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

KINDS = ("completions", "compose")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


@dataclass
class Tally:
    """What the clients of one cell saw."""

    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """One row of the table: a server configuration, a kind of request, a number of clients."""

    config: str
    kind: str
    clients: int
    seconds: float
    requests: int
    requests_per_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    errors: int


def request_body(args, kind: str, seed: int) -> tuple[str, dict]:
    usage = {"stream": True, "stream_options": {"include_usage": True}, "seed": seed}
    if kind == "completions":
        return "/v1/completions", {"prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0.8,
                                   **usage}
    return "/v1/chat/completions", {"messages": [{"role": "user", "content": args.cipai}], **usage}


async def one_request(http, path: str, body: dict) -> tuple[float, float, int]:
    """(latency, time to first token, completion tokens) of one streamed request."""
    t0 = time.monotonic()
    first, tokens, done = None, 0, False
    async with http.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            ch = json.loads(line[6:])
            if "error" in ch:
                raise RuntimeError(ch["error"]["message"])
            if ch.get("usage"):
                tokens = ch["usage"]["completion_tokens"]
            if first is None and any(c.get("text") or (c.get("delta") or {}).get("content") for c in ch["choices"]):
                first = time.monotonic()
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    return time.monotonic() - t0, (first or time.monotonic()) - t0, tokens


async def client(http, args, kind: str, stop_at: float, tally: Tally, i: int) -> None:
    k = 0
    while time.monotonic() < stop_at:
        path, body = request_body(args, kind, seed=i * 100_000 + k)
        k += 1
        try:
            lat, ttft, tokens = await one_request(http, path, body)
        except Exception as e:  # counted, and the first few shown
            tally.errors.append(f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.05)  # a server that refuses at once must not spin the loop
            continue
        tally.latency.append(lat)
        tally.ttft.append(ttft)
        tally.tokens += tokens


async def measure(url: str, args, config: str, kind: str, clients: int) -> Cell:
    import httpx

    tally = Tally()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as http:
        await one_request(http, *request_body(args, kind, seed=0))  # warm: composer, masks, caches
        t0 = time.monotonic()
        await asyncio.gather(*(client(http, args, kind, t0 + args.duration, tally, i) for i in range(clients)))
        wall = time.monotonic() - t0
    for e in tally.errors[:3]:
        print(f"error ({config}, {kind}, {clients} clients): {e}", file=sys.stderr)
    ms = lambda x: round(x * 1000, 1)  # noqa: E731
    n = len(tally.latency)
    return Cell(config, kind, clients, round(wall, 2), n, round(n / wall, 2), round(tally.tokens / wall, 1),
                ms(pct(tally.latency, 50)), ms(pct(tally.latency, 99)), ms(pct(tally.ttft, 50)),
                ms(pct(tally.ttft, 99)), len(tally.errors))


# ----------------------------------------------------------------------------- servers

def serve_takes(flag: str) -> bool:
    """Whether `tianci serve` has this flag (its parser, read in-process)."""
    from tianci.cli import build_parser

    sub = next(a for a in build_parser(["serve"])._subparsers._group_actions if a.dest == "command")
    return any(flag in a.option_strings for a in sub.choices["serve"]._actions)


def serve_command(args, max_batch: int | None, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "tianci", "serve", "--run", args.run, "--port", str(port),
           "--device", args.device, "--max-waiting", "1024", "--max-tokens", str(max(args.max_tokens, 512)),
           "--log-level", "warning"]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--max-batch", str(max_batch)] if max_batch is not None else []
    cmd += [] if "compose" in args.kinds else ["--no-cipai"]
    cmd += ["--quantize", args.quantize] if args.quantize != "none" else []
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`tianci serve` as a subprocess on a free loopback port."""

    def __init__(self, args, max_batch: int | None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(serve_command(args, max_batch, self.port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tianci serve exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"tianci serve did not answer /healthz within {timeout:.0f} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def configs(args) -> list[tuple[str, int | None]]:
    """(label, --max-batch value or None for the server's default)."""
    if args.max_batch:
        return [(f"max-batch {n}", n) for n in args.max_batch]
    if serve_takes("--max-batch"):
        return [("batched", None), ("max-batch 1", 1)]
    return [("default", None)]


# ----------------------------------------------------------------------------- report

COLUMNS = [("config", "config", "{}"), ("kind", "kind", "{}"), ("clients", "clients", "{}"),
           ("req/s", "requests_per_s", "{:.2f}"), ("tok/s", "tokens_per_s", "{:.1f}"), ("p50 ms", "p50_ms", "{:.0f}"),
           ("p99 ms", "p99_ms", "{:.0f}"), ("ttft p50", "ttft_p50_ms", "{:.0f}"), ("ttft p99", "ttft_p99_ms", "{:.0f}"),
           ("requests", "requests", "{}"), ("errors", "errors", "{}")]


def table(cells: list[Cell]) -> str:
    rows = [[h for h, _, _ in COLUMNS]] + [[f.format(getattr(c, a)) for _, a, f in COLUMNS] for c in cells]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    out = "\n".join(lines)
    names = list(dict.fromkeys(c.config for c in cells))
    if len(names) == 2:  # the first configuration against the second, cell by cell
        base = {(c.kind, c.clients): c for c in cells if c.config == names[1]}
        ratios = [f"{c.kind} x{c.clients}: {c.tokens_per_s / base[(c.kind, c.clients)].tokens_per_s:.2f}x"
                  for c in cells if c.config == names[0] and base.get((c.kind, c.clients))
                  and base[(c.kind, c.clients)].tokens_per_s > 0]
        if ratios:
            out += f"\n\ntokens/s, {names[0]} / {names[1]}: " + ", ".join(ratios)
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running server (one configuration; default: start them for --run)")
    ap.add_argument("--run", help="run directory to serve")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--duration", type=float, default=10.0, help="seconds each cell sends requests")
    ap.add_argument("--max-tokens", type=int, default=32, help="per completion")
    ap.add_argument("--prompt", default="浣溪沙 ")
    ap.add_argument("--cipai", default="浣溪沙", help="the chat message a compose request sends")
    ap.add_argument("--max-batch", type=int, nargs="+", default=None,
                    help="server configurations to compare (default: batched and 1, where serve has --max-batch)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quantize", choices=["none", "int8"], default="none")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of each server (0: torch's default)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    ap.add_argument("--json", default=None, help="also write the cells to this file")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if bool(args.url) == bool(args.run):
        ap.error("give --url or --run")
    if args.max_batch and (args.url or not serve_takes("--max-batch")):
        ap.error("--max-batch: with --run only, and this `tianci serve` has no --max-batch")
    cells: list[Cell] = []
    for label, max_batch in ([("server", None)] if args.url else configs(args)):
        server = None if args.url else Server(args, max_batch)
        try:
            if server is not None:
                server.wait_ready()
            for kind in args.kinds:
                for n in args.clients:
                    c = asyncio.run(measure(args.url or server.url, args, label, kind, n))
                    cells.append(c)
                    print(f"load_test: {label}, {kind}, {n} clients: {c.tokens_per_s} tokens/s, p99 {c.p99_ms} ms, "
                          f"{c.errors} errors", file=sys.stderr, flush=True)
        finally:
            if server is not None:
                server.stop()
    print(table(cells))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(c) for c in cells], indent=2) + "\n")
    return 1 if any(c.errors for c in cells) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
