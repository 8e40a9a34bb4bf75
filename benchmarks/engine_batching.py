"""In-process tokens/s of the batched engine (tianci.engine): 16 requests submitted at once, decoded at
max_batch 16 vs max_batch 1 — same model, same run, three interleaved repeats, one torch thread.

    PYTHONPATH=src python benchmarks/engine_batching.py                       # completions
    PYTHONPATH=src python benchmarks/engine_batching.py --compose --run RUN   # 填词 (needs the 词谱 data)

completions: ci-cpu shape, random weights, vocab 6000, prompts of 8 tokens, temperature 1.
--compose: 16 `compose(..., engine=)` requests of --cipai (one poem each, seeds 0..15) from the trained
RUN's model, as the server decodes them (rows join the engine's batches with their masks); tokens
are the tokens the rows drew. --profile: cProfile of one batched compose round instead. The
server-level comparison is benchmarks/load_test.py.
"""
import argparse, cProfile, pstats, statistics, threading, time, torch
from tianci.engine import Engine, Group
torch.set_num_threads(1)
ap = argparse.ArgumentParser()
ap.add_argument("--compose", action="store_true")
ap.add_argument("--run", help="a trained char-tokenizer run (--compose)")
ap.add_argument("--cipai", default="浣溪沙")
ap.add_argument("--profile", action="store_true")
ap.add_argument("--repeats", type=int, default=3)
args = ap.parse_args()
N = 16


def completions():
    from tianci.config import load_preset
    from tianci.model import GPT
    cfg = load_preset("ci-cpu").model
    cfg.vocab_size = 6000
    torch.manual_seed(0)
    m = GPT(cfg).eval()

    def run(max_batch, tokens):
        eng = Engine(m, max_batch)
        groups = []
        t = time.perf_counter()
        for i in range(N):
            g = Group(eng)
            g.add([1 + i, 2, 3, 4, 5, 6, 7, 8], tokens, lambda tok: False, temperature=1.0,
                  generator=torch.Generator().manual_seed(i))
            groups.append(g)
        for g in groups:
            list(g.items())
        return N * tokens / (time.perf_counter() - t)
    for tokens in (32, 56, 120):
        report(f"max_tokens {tokens:3d} (block {cfg.block_size})", lambda b: run(b, tokens), lambda b: run(b, 8))


def compose_mode():
    from tianci.checkpoint import load_run
    from tianci.ci.cipai import CiPu
    from tianci.ci.compose import Composer, compose
    run_ = load_run(args.run)
    cipu = CiPu.load()
    composer = Composer(run_.tokenizer, cipu.phon, cipu)
    form = composer.choose(args.cipai).form
    composer.masks(form)
    poems = {}

    def run(max_batch, n=N, engine=Engine):
        eng = engine(run_.model, max_batch).start()  # the server's loop thread; one thread per request
        out = [None] * n

        def one(i):
            out[i] = compose(run_.model, run_.tokenizer, form, seed=i, composer=composer, engine=eng)
        ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        dt = time.perf_counter() - t
        eng.close()
        texts = [r.text for r in out]
        assert poems.setdefault(n, texts) == texts, "a seeded poem changed with the batch size"
        return sum(len(r.tokens) for r in out) / dt
    if args.profile:  # the engine's thread is where the rows' hooks and draws run
        pr = cProfile.Profile()

        class Profiled(Engine):
            def _loop(self):
                pr.enable()
                try:
                    super()._loop()
                finally:
                    pr.disable()
        run(16)
        run(16, engine=Profiled)
        pstats.Stats(pr).sort_stats("tottime").print_stats(30)
        return
    report(f"compose {args.cipai} x{N}", run, lambda b: run(b, 2))
    print("poems (seed 0, 1):", poems[N][0].replace("\n", "/"), "|", poems[N][1].replace("\n", "/"))


def report(label, run, warm):
    warm(16), warm(1)
    b16, b1 = [], []
    for _ in range(args.repeats):
        b16.append(run(16)); b1.append(run(1))
    ratios = [a / b for a, b in zip(b16, b1)]
    print(f"{label}: max_batch 16 {statistics.median(b16):6.0f} tok/s, max_batch 1 {statistics.median(b1):5.0f} "
          f"tok/s, ratio median {statistics.median(ratios):.2f} (runs {', '.join(f'{r:.2f}' for r in ratios)})",
          flush=True)


compose_mode() if args.compose else completions()
