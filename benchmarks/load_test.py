"""Load test for `tianci serve` (a benchmark script, not a test).

    python benchmarks/load_test.py --run runs/ci-cpu            # starts its own server on loopback
    python benchmarks/load_test.py --url http://127.0.0.1:8000   # or hits a running one

N concurrent clients (default 16) send /v1/completions requests back to back for a fixed time
(default 20 s); reports requests/s, p50/p99 latency, completion tokens/s and errors (non-200
answers, broken streams, transport errors). --stream reads SSE and also reports time to first token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


async def client(http, args, stop_at: float, stats: dict, i: int) -> None:
    body = {"prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0.8, "seed": i,
            "stream": args.stream}
    if args.model:
        body["model"] = args.model
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        try:
            if args.stream:
                tokens, first, done = 0, None, False
                async with http.stream("POST", "/v1/completions", json=body) as r:
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
                        first = first or time.monotonic()
                        tokens += sum(1 for c in ch["choices"] if c["text"])  # ~1 token per chunk (char model)
                if not done:
                    raise RuntimeError("stream ended without [DONE]")
                stats["ttft"].append(first - t0 if first else float("nan"))
            else:
                r = await http.post("/v1/completions", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                tokens = r.json()["usage"]["completion_tokens"]
        except Exception as e:  # counted, and the first few shown
            stats["errors"].append(f"{type(e).__name__}: {e}")
            continue
        stats["lat"].append(time.monotonic() - t0)
        stats["tokens"] += tokens


async def load(args, url: str) -> dict:
    import httpx

    stats = {"lat": [], "ttft": [], "tokens": 0, "errors": []}
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        (await http.get("/healthz")).raise_for_status()
        t0 = time.monotonic()
        stop_at = t0 + args.duration
        await asyncio.gather(*(client(http, args, stop_at, stats, i) for i in range(args.clients)))
        wall = time.monotonic() - t0
        health = (await http.get("/healthz")).json()
    n = len(stats["lat"])
    out = {"clients": args.clients, "duration_s": round(wall, 2), "requests": n,
           "requests_per_s": round(n / wall, 2), "p50_ms": round(pct(stats["lat"], 50) * 1000, 1),
           "p99_ms": round(pct(stats["lat"], 99) * 1000, 1), "tokens_per_s": round(stats["tokens"] / wall, 1),
           "max_tokens": args.max_tokens, "stream": args.stream, "errors": len(stats["errors"]),
           "server_queue": health["queue"]}
    if args.stream:
        out["ttft_p50_ms"] = round(pct(stats["ttft"], 50) * 1000, 1)
    for e in stats["errors"][:5]:
        print("error:", e, file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running server (default: start one for --run)")
    ap.add_argument("--run", help="run directory to serve on a free loopback port")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt", default="浣溪沙 ")
    ap.add_argument("--model", default=None)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for --run (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    if not args.url and not args.run:
        ap.error("give --url or --run")
    server = None
    if args.url:
        url = args.url
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from server_fixtures import start_server, stop_server  # the tests' loopback launcher
        from tianci.serve.app import create_app
        from tianci.serve.limits import Limits

        if args.threads:
            import torch
            torch.set_num_threads(args.threads)

        server, thread, url = start_server(create_app(args.run, load_cipu=False, limits=Limits(max_waiting=256)))
    try:
        out = asyncio.run(load(args, url))
    finally:
        if server is not None:
            stop_server(server, thread)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
