"""`tianci serve --run DIR`: the playground at / and an OpenAI-compatible API (see tianci.serve.app)."""

from __future__ import annotations

import sys

from ..errors import TianciError


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="run directory (a trained GPT)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 to expose it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--which", choices=["best", "latest"], default="best", help="which weights to load")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8 weights for faster decoding (slightly different outputs; see docs/speed.md)")
    p.add_argument("--model-name", default=None, help="model id in /v1/models (default: the run's name)")
    p.add_argument("--cipu-source", default=None, help="词谱 directory or URL (default TIANCI_CIPU_SOURCE)")
    p.add_argument("--rhyme-source", default=None, help="rhyme tables (default TIANCI_RHYME_SOURCE)")
    p.add_argument("--data", default=None, help="poems.jsonl / data directory for 词牌 counts and corpus "
                   "forms (default: the run's data directory)")
    p.add_argument("--no-cipai", action="store_true", help="serve completions only (no 词谱 needed)")
    p.add_argument("--max-batch", type=int, default=16,
                   help="rows decoded together in one batch, the KV cache's slots (default 16; 1: one at a time)")
    p.add_argument("--max-waiting", type=int, default=64, help="queued requests before 429 (default 64)")
    p.add_argument("--max-tokens", type=int, default=512, help="cap on max_tokens per choice")
    p.add_argument("--max-n", type=int, default=4, help="cap on n")
    p.add_argument("--max-prompt-chars", type=int, default=2000, help="cap on the prompt's length")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024, help="cap on a request body")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--docs", action="store_true",
                   help="serve /docs and /redoc (offline, from the fastapi-offline package of the serve extra; "
                   "without it they load Swagger UI / ReDoc from a CDN; /openapi.json is always served)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise TianciError(f"`tianci serve` needs FastAPI and uvicorn ({e.name} is missing): "
                          "pip install 'tianci[serve]'") from None
    if not 0 < args.port < 65536:
        raise TianciError(f"--port {args.port} is out of range 1..65535")
    from ..checkpoint import load_run
    from ..serve.limits import Limits

    from ..runtime import compute_init

    device = compute_init(args.device, threads=args.threads, ddp=False).device
    limits = Limits(max_tokens=args.max_tokens, max_n=args.max_n, max_prompt_chars=args.max_prompt_chars,
                    max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
                    max_waiting=args.max_waiting).validate()
    r = load_run(args.run, device=str(device), which=args.which, quantize=args.quantize)
    cipu = None
    if not args.no_cipai:
        from ..ci.cipai import open_cipu
        try:
            cipu = open_cipu(args.cipu_source, args.data, args.rhyme_source, run_dir=args.run)
        except TianciError as e:
            print(f"tianci serve: warning: 词牌 routes disabled: {e}", file=sys.stderr)
    app = create_app(r, cipu=cipu, load_cipu=False, limits=limits, model_name=args.model_name,
                     docs=args.docs)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tianci serve: listening on {args.host}: reachable from other machines", file=sys.stderr)
    print(f"tianci serve: http://{args.host}:{args.port}/  (model {app.state.tianci.model_id!r})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
