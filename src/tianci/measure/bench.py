"""The benchmark behind `tianci bench`: training and decoding speed, measured side by side.

Machines are noisy (this project's CPU is shared by several people), so every comparison is made
inside one process with the variants *interleaved*: round 1 runs fast, classic, tutorial; round 2
runs them again; the median round of each is reported, and ratios come from those medians.

Training variants, all on the same architecture and synthetic batches:
- fast:     the trainer's path -- fused QKV + SDPA attention, chunked linear+cross-entropy
            (tianci.losses), the preset's dtype ("auto" picks it), foreach AdamW;
- classic:  nanoGPT's fp32 path -- SDPA attention, full (N, V) logits + F.cross_entropy;
- tutorial: the tutorial's per-head loop attention (one Head module per head) + F.cross_entropy.
MFU = model FLOPs/token x tokens/s / the matmul peak measured here (2048^3) for the dtype in use.
"""

from __future__ import annotations

import copy
import resource
import statistics
import time
from pathlib import Path

import torch

from ..config import Preset
from ..generate import generate
from ..model import GPT
from ..optim import build_optimizers
from ..runtime import autocast, compute_init, matmul_peak, sync as _sync
from ..batches import Batches, batch_seed
from ..train import train_step


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated CUDA memory, in MB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


class _Variant:
    """One training path: a model, its optimizers, and how it computes the loss. Its step is the
    trainer's own `train_step`, so the benchmark measures what training does."""

    def __init__(self, name: str, preset: Preset, device, dtype, fused: bool, attn_impl: str, seed: int):
        self.name, self.device, self.dtype, self.fused = name, device, dtype, fused
        cfg = copy.deepcopy(preset.model)
        cfg.attn_impl = attn_impl
        torch.manual_seed(seed)
        self.model = GPT(cfg).to(device).train()
        self.tc = copy.deepcopy(preset.train)
        self.tc.fused_loss = fused
        if name != "fast":  # the classic paths are nanoGPT's: AdamW, fused on CUDA only
            self.tc.optimizer, self.tc.fused_adamw = "adamw", False
        self.opts = build_optimizers(self.model, self.tc, device.type)
        self.times: list[float] = []

    def step(self, data: list, it: int) -> torch.Tensor:
        """Step `it` on the synthetic batches, micro-batch m of step it = data[(it * accum + m) % len]."""
        accum = self.tc.grad_accum
        res = train_step(self.model, self.opts, self.tc, it, lambda m: data[(it * accum + m) % len(data)],
                         amp=lambda: autocast(self.device, self.dtype))
        return res.loss


def bench_train(preset: Preset, device, fast_dtype: torch.dtype, steps: int = 20, rounds: int = 3, warmup: int = 3,
                variants=("fast", "classic", "tutorial"), seed: int = 0, log=None) -> dict:
    """ms/step and tokens/s of each variant, interleaved round by round; median round reported.
    `fast_dtype`: the dtype compute_init chose for the preset (the trainer's), used by "fast"."""
    cfg, tc = preset.model, preset.train
    B, T, V = tc.batch_size, cfg.block_size, cfg.vocab_size
    g = torch.Generator().manual_seed(seed)
    data = [torch.randint(0, V, (B, T + 1), generator=g) for _ in range(8)]
    data = [(d[:, :-1].to(device), d[:, 1:].to(device)) for d in data]
    specs = {"fast": (fast_dtype, True, "sdpa"),
             "classic": (torch.float32, False, "sdpa"),
             "tutorial": (torch.float32, False, "loop")}
    vs = [_Variant(n, preset, device, *specs[n], seed=seed) for n in variants]
    flops = vs[0].model.flops_per_token()
    losses = {}
    for v in vs:  # warm up allocator, kernels and optimizer state
        for i in range(warmup):
            v.step(data, i)
    for r in range(rounds):
        for v in vs:
            _sync(device)
            t = time.perf_counter()
            for i in range(steps):
                loss = v.step(data, warmup + r * steps + i)
            _sync(device)
            v.times.append((time.perf_counter() - t) / steps)
            losses[v.name] = float(loss)
            if log:
                log(f"  round {r + 1}/{rounds} {v.name:<8} {v.times[-1] * 1e3:8.1f} ms/step")
    tokens_per_step = B * T * tc.grad_accum
    out = {"flops_per_token": flops, "tokens_per_step": tokens_per_step, "variants": {}}
    for v in vs:
        ms = statistics.median(v.times) * 1e3
        out["variants"][v.name] = {
            "dtype": str(v.dtype).replace("torch.", ""), "fused_loss": v.fused,
            "attn_impl": v.model.config.attn_impl, "ms_per_step": ms,
            "ms_per_step_all": [t * 1e3 for t in v.times], "tokens_per_s": tokens_per_step / (ms / 1e3),
            "loss_last": losses[v.name]}
    return out


DECODE_VARIANTS = {  # name -> (use the KV cache, weight format, compiled step)
    "cache": (True, "none", False),
    "cache_int8": (True, "int8", False),
    "nocache": (False, "none", False),  # the tutorial's generation: recompute the whole context every step
    "cache_compiled": (True, "none", True),  # only with compile=True (tianci.decode)
    "cache_int8_compiled": (True, "int8", True),
}


@torch.no_grad()
def bench_decode(cfg, device, new_tokens: int = 200, batches=(1, 8), max_s: float = 60.0,
                 seed: int = 0, log=None, state_dict: dict | None = None, compile: bool = False) -> dict:
    """Decode tokens/s with and without the KV cache, fp32 and int8 weights, plus prefill.
    Random weights unless state_dict is given (speed does not depend on them).
    A run that exceeds max_s stops early and reports the tokens it produced."""
    from ..decode import CompiledDecoder
    from ..quant import apply_quantization

    torch.manual_seed(seed)
    models = {}
    for fmt in ("none", "int8"):
        m = GPT(copy.deepcopy(cfg))
        if state_dict is not None:
            m.load_state_dict(state_dict)
        models[fmt] = apply_quantization(m.to(device).eval(), fmt)
    decoders = {fmt: CompiledDecoder(m) for fmt, m in models.items()}
    out = {}
    for B in batches:
        for name, (use_cache, fmt, comp) in DECODE_VARIANTS.items():
            if comp and not compile:
                continue
            if comp:  # compile outside the timed region; report what it cost
                t = time.perf_counter()
                if decoders[fmt].step(B) is None:
                    continue
                out[f"b{B}_{name}_compile_s"] = time.perf_counter() - t
            idx = torch.zeros((B, 1), dtype=torch.long, device=device)
            gen = torch.Generator(device=device).manual_seed(seed)
            n, t = 0, time.perf_counter()
            for _ in generate(models[fmt], idx, new_tokens, temperature=1.0, generator=gen, use_cache=use_cache,
                              decoder=decoders[fmt] if comp else None):
                n += 1
                if time.perf_counter() - t > max_s:
                    break
            _sync(device)
            s = time.perf_counter() - t
            out[f"b{B}_{name}"] = {"batch": B, "tokens": n, "seconds": s, "tokens_per_s": B * n / s,
                                   "steps_per_s": n / s}
            if log:
                log(f"  decode batch {B} {name:<10} {n} steps {B * n / s:9.1f} tokens/s")
        for name in DECODE_VARIANTS:
            if name != "nocache" and f"b{B}_{name}" in out:
                out[f"b{B}_{name}_speedup"] = out[f"b{B}_{name}"]["tokens_per_s"] / out[f"b{B}_nocache"]["tokens_per_s"]
    # prefill: one pass over a full block of prompt into the cache
    x = torch.randint(0, cfg.vocab_size, (1, cfg.block_size), device=device)
    times = []
    for _ in range(3):
        cache = models["none"].new_kv_cache(1)
        _sync(device)
        t = time.perf_counter()
        models["none"](x, kv_cache=cache)
        _sync(device)
        times.append(time.perf_counter() - t)
    out["prefill_ms"] = min(times) * 1e3
    out["prefill_tokens"] = cfg.block_size
    return out


@torch.no_grad()
def quant_quality(run_dir, device, tokens: int = 32768, seed: int = 0, batch_size: int = 16) -> dict:
    """What int8 weights cost a trained run: val loss (nats/token) and greedy next-token agreement
    of the fp32 and int8 models on the same windows of the run's val.bin."""
    from ..checkpoint import load_run
    from ..errors import TianciError
    from ..quant import quantize_int8

    run = load_run(run_dir, device=str(device))
    data = run.meta.get("data", {})
    if not data.get("dir"):
        raise TianciError(f"--run {run_dir}: its config names no data directory; prepare the data first")
    T = run.model.config.block_size
    val = Batches(Path(data["dir"]) / "val.bin", data.get("dtype", "uint16"), T, batch_size, torch.device(device))
    batches = [val.get(batch_seed(seed, 0, k)) for k in range(max(1, tokens // (batch_size * T)))]
    q = quantize_int8(copy.deepcopy(run.model))
    res, preds = {}, {}
    for name, m in (("fp32", run.model), ("int8", q)):
        losses, preds[name] = [], []
        for x, y in batches:  # keep the argmax, not the (B, T, V) logits
            logits, loss = m(x, y)
            losses.append(float(loss))
            preds[name].append(logits.argmax(-1))
        res[f"val_loss_{name}"] = sum(losses) / len(losses)
    preds = {k: torch.cat(v) for k, v in preds.items()}
    res["greedy_agreement"] = float((preds["fp32"] == preds["int8"]).float().mean())
    res["tokens"] = len(batches) * batch_size * T
    res["run"] = str(run_dir)
    return res


def run_bench(preset: Preset, decode_preset: Preset | None, *, device: str = "auto", steps: int = 20,
              rounds: int = 3, decode_tokens: int = 200, decode_max_s: float = 60.0, malloc: bool = True,
              variants=("fast", "classic", "tutorial"), bf16_peak: bool = False, peak_n: int = 2048,
              decode_state: dict | None = None, quality_run=None, decode_compile: bool = False,
              threads: int = 0, log=None) -> dict:
    compute = compute_init(device, preset.train.dtype, threads=threads, malloc=malloc, ddp=False, preset=preset)
    dev, tuned = compute.device, compute.malloc_tuned
    res = {"preset": preset.name, "device": str(dev), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "malloc_tuned": tuned, "config": {
               k: getattr(preset.model, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size",
                                                     "pos", "norm", "mlp_act", "tie_embeddings")}}
    res["config"]["batch_size"] = preset.train.batch_size
    if compute.dtype_why:
        res["dtype_auto"] = compute.dtype_why
    fast_dtype = compute.dtype
    peaks = {"float32": matmul_peak(torch.float32, dev, n=peak_n)}
    if dev.type == "cuda" or fast_dtype != torch.float32 or bf16_peak:
        peaks["bfloat16"] = matmul_peak(torch.bfloat16, dev, n=peak_n)
    res["matmul_peak"] = peaks
    if log:
        log("matmul peak: " + ", ".join(f"{k} {v['gflops']:.0f} GFLOP/s (n={v['n']})" for k, v in peaks.items()))
    if steps > 0:
        tr = bench_train(preset, dev, fast_dtype, steps=steps, rounds=rounds, variants=variants, log=log)
        for v in tr["variants"].values():
            peak = peaks.get(v["dtype"], peaks["float32"])["gflops"]
            v["mfu"] = tr["flops_per_token"] * v["tokens_per_s"] / (peak * 1e9)
        base = tr["variants"].get("classic")
        if base:
            for v in tr["variants"].values():
                v["speedup_vs_classic"] = base["ms_per_step"] / v["ms_per_step"]
        res["train"] = tr
    res["peak_memory_mb_after_train"] = peak_memory_mb(dev)
    if decode_preset is not None and decode_tokens > 0:
        dec = bench_decode(decode_preset.model, dev, new_tokens=decode_tokens, max_s=decode_max_s, log=log,
                           state_dict=decode_state, compile=decode_compile)
        dec["preset"] = decode_preset.name
        dec["weights"] = "trained" if decode_state is not None else "random"
        res["decode"] = dec
    if quality_run is not None:
        res["int8_quality"] = quant_quality(quality_run, dev)
    res["peak_memory_mb"] = peak_memory_mb(dev)
    return res


def format_table(res: dict) -> str:
    lines = [f"tianci bench  preset={res['preset']}  device={res['device']}  threads={res['threads']}  "
             f"torch={res['torch']}  malloc_tuned={res['malloc_tuned']}"]
    if "dtype_auto" in res:
        lines.append(f"dtype auto (the fast variant): {res['dtype_auto']}")
    lines.append("matmul peak: " + ", ".join(f"{k} {v['gflops']:.1f} GFLOP/s (n={v['n']})"
                                             for k, v in res["matmul_peak"].items()))
    if "train" in res:
        tr = res["train"]
        lines.append(f"training: {tr['tokens_per_step']} tokens/step, {tr['flops_per_token'] / 1e6:.2f} MFLOP/token")
        lines.append(f"  {'variant':<9}{'dtype':<10}{'loss':<9}{'attn':<6}{'ms/step':>9}{'tokens/s':>11}"
                     f"{'MFU':>8}{'vs classic':>12}")
        for name, v in tr["variants"].items():
            lines.append(f"  {name:<9}{v['dtype']:<10}{'fused' if v['fused_loss'] else 'full':<9}{v['attn_impl']:<6}"
                         f"{v['ms_per_step']:9.1f}{v['tokens_per_s']:11.0f}{v['mfu'] * 100:7.1f}%"
                         + (f"{v['speedup_vs_classic']:11.2f}x" if "speedup_vs_classic" in v else f"{'-':>12}"))
    if "decode" in res:
        d = res["decode"]
        lines.append(f"decoding ({d['preset']} model, {d.get('weights', 'random')} weights): prefill "
                     f"{d['prefill_tokens']} tokens {d['prefill_ms']:.1f} ms")
        for B in (1, 8):
            if f"b{B}_nocache" not in d:
                continue
            nc = d[f"b{B}_nocache"]
            lines.append(f"  batch {B}: recompute (tutorial) {nc['tokens_per_s']:7.1f} tokens/s ({nc['tokens']} steps)")
            for name, label in (("cache", "KV cache fp32"), ("cache_int8", "KV cache int8"),
                                ("cache_compiled", "compiled fp32"), ("cache_int8_compiled", "compiled int8")):
                if f"b{B}_{name}" not in d:
                    continue
                c = d[f"b{B}_{name}"]
                lines.append(f"           {label:<18} {c['tokens_per_s']:7.1f} tokens/s ({c['tokens']} steps)  "
                             f"{d[f'b{B}_{name}_speedup']:5.1f}x")
    if "int8_quality" in res:
        q = res["int8_quality"]
        lines.append(f"int8 weights on {q['run']}: val loss {q['val_loss_fp32']:.4f} (fp32) -> {q['val_loss_int8']:.4f} "
                     f"(int8) nats/token over {q['tokens']} tokens; greedy next token agrees {q['greedy_agreement']:.1%}")
    lines.append(f"peak memory: {res['peak_memory_mb_after_train']:.0f} MB after training, "
                 f"{res['peak_memory_mb']:.0f} MB at the end")
    return "\n".join(lines)
