"""In-process tokens/s of the batched engine (tianci.engine): 16 requests submitted at once, decoded at
max_batch 16 vs max_batch 1 — same model (ci-cpu shape, random weights, vocab 6000), same run, three
interleaved repeats, one torch thread; prompts of 8 tokens, temperature 1. The server-level comparison
is benchmarks/load_test.py.

    PYTHONPATH=src python benchmarks/engine_batching.py
"""
import statistics, sys, time, torch
from tianci.config import load_preset
from tianci.engine import Engine, Group
from tianci.model import GPT
torch.set_num_threads(1)
cfg = load_preset("ci-cpu").model
cfg.vocab_size = 6000
torch.manual_seed(0)
m = GPT(cfg).eval()
N = 16
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
    run(16, 8); run(1, 8)
    b16, b1 = [], []
    for _ in range(3):
        b16.append(run(16, tokens)); b1.append(run(1, tokens))
    ratios = [a / b for a, b in zip(b16, b1)]
    print(f"max_tokens {tokens:3d} (block {cfg.block_size}): max_batch 16 {statistics.median(b16):6.0f} tok/s, "
          f"max_batch 1 {statistics.median(b1):5.0f} tok/s, ratio median {statistics.median(ratios):.2f} "
          f"(runs {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
