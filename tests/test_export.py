"""Export to transformers / GGUF and import back, checked against the real runtimes.

Each exportable preset is trained for 0 and a few steps on the tiny corpus (block_size 64, so a
3-token prompt plus 50 greedy tokens fits), exported, and loaded by stock transformers (no
trust_remote_code) and, where installed, by llama-cpp-python."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the interop extra (transformers) is not installed")
pytest.importorskip("gguf", reason="the interop extra (gguf) is not installed")

from safetensors.torch import load_file  # noqa: E402

from tianci.checkpoint import load_run  # noqa: E402
from tianci.cli import main  # noqa: E402
from tianci.config import load_preset  # noqa: E402
from tianci.interop import arch  # noqa: E402
from tianci.interop.hf import export_hf, import_hf  # noqa: E402

# preset (+ switches) -> the transformers architecture it must export to
CASES = {
    "ci-cpu": ("ci-cpu", {}, "arcee"),
    "nanogpt-cpu": ("nanogpt-cpu", {}, "gpt2"),
    "ci-gpu": ("ci-gpu", {"n_layer": 2, "n_embd": 64, "n_head": 4}, "gpt2"),  # same switches, smaller
    "layernorm": ("layernorm", {}, "gpt2"),  # the loop attention layout, bias=True, untied
    "swiglu": ("ci-cpu", {"mlp_act": "swiglu", "bias": True, "tie_embeddings": False}, "llama"),
    "qknorm": ("ci-cpu", {"mlp_act": "swiglu", "qk_norm": True}, "qwen3"),
}
TOL = 1e-4  # tianci vs transformers, float32 (the bound)
LLAMA_CPP_TOL = 1e-3  # tianci vs llama.cpp: other kernels, other summation order (measured ~4e-5)


def _train(preset_name: str, switches: dict, data, out, steps: int):
    from tianci.train import train

    p = load_preset(preset_name)
    for k, v in switches.items():
        setattr(p.model, k, v)
    p.model.block_size = 64
    p.model.zero_init_proj = False  # zero projections at init would hide attention/MLP mapping bugs
    t = p.train
    t.max_iters, t.max_time, t.eval_interval, t.eval_iters, t.batch_size = steps, 0.0, max(1, steps), 1, 4
    t.device, t.dtype, t.progress, t.compile, t.log = "cpu", "float32", False, False, "none"
    train(p, data, out, force=True, quiet=True)
    return out


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """(case, steps) -> run dir, trained on first use."""
    made: dict = {}

    def get(case: str, steps: int):
        if (case, steps) not in made:
            name, sw, _ = CASES[case]
            made[case, steps] = _train(name, sw, tiny_data, tmp_path_factory.mktemp(f"{case}-{steps}"), steps)
        return made[case, steps]
    return get


def _hf(path):
    m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    return m, transformers.AutoTokenizer.from_pretrained(path)


def _prompt(tiny_data, run) -> list[int]:
    return run.tokenizer.encode((tiny_data / "ci.txt").read_text(encoding="utf-8")[:64])


@pytest.mark.parametrize("steps", [0, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_transformers_logits_and_greedy_match(case, steps, runs, tiny_data, tmp_path):
    """Guards the weight mapping of every architecture (RoPE row permutation, GPT-2's transposed
    Conv1D, zero biases, norm epsilon, tied heads): stock transformers computes tianci's logits to
    1e-4 in fp32 and continues a prompt with the same 50 greedy tokens."""
    from tianci.generate import generate

    run_dir = runs(case, steps)
    info = export_hf(run_dir, tmp_path / "hf", sample=False)
    assert info["model_type"] == CASES[case][2]
    m, _ = _hf(tmp_path / "hf")
    assert type(m).__name__ == arch.CAUSAL_LM[info["model_type"]]
    r = load_run(run_dir)
    x = torch.tensor([_prompt(tiny_data, r)])
    with torch.no_grad():
        diff = (r.model(x)[0] - m(x).logits).abs().max().item()
    assert diff <= TOL
    p = x[:, :3]
    ours = torch.stack(list(generate(r.model, p, 50, temperature=0.0)), dim=1)
    with torch.no_grad():
        theirs = m.generate(p, max_new_tokens=50, do_sample=False)[:, 3:]
    assert torch.equal(ours, theirs)


def test_rope_layout_needs_the_permutation(runs, tmp_path):
    """Guards the RoPE pitfall: tianci rotates interleaved pairs, transformers rotates halves.
    Writing q/k rows unpermuted gives a different function (so the 1e-4 match above is not luck)."""
    run_dir = runs("ci-cpu", 3)
    export_hf(run_dir, tmp_path / "hf", sample=False)
    m, _ = _hf(tmp_path / "hf")
    r = load_run(run_dir)
    x = torch.arange(20).view(1, -1) % r.preset.model.vocab_size
    inv = torch.argsort(arch.rope_perm(r.preset.model.head_size))
    with torch.no_grad():
        for layer in m.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.copy_(arch.permute_heads(proj.weight, r.preset.model.heads, inv))
        assert (r.model(x)[0] - m(x).logits).abs().max().item() > 100 * TOL


def test_tied_embeddings_are_stored_once_and_retied(runs, tmp_path):
    """Guards tied embeddings in safetensors: the file holds the matrix once, and transformers
    ties lm_head back to it (an untied load would leave lm_head random)."""
    export_hf(runs("ci-cpu", 3), tmp_path / "hf", sample=False)
    keys = load_file(str(tmp_path / "hf" / "model.safetensors")).keys()
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    m, _ = _hf(tmp_path / "hf")
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()


def test_folder_has_the_files_and_a_model_card(runs, tmp_path):
    """Guards the export's contents: generation_config, tokenizer files and a model card that states
    the data, the config, the validation loss, a sample and the data licence."""
    run_dir = runs("ci-cpu", 3)
    export_hf(run_dir, tmp_path / "hf")
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "README.md"} <= files
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    best = json.loads((run_dir / "best.json").read_text(encoding="utf-8"))
    assert f"{best['val_loss']:.4f}" in card and "MIT" in card and "ci-cpu" in card and "## A sample" in card
    transformers.GenerationConfig.from_pretrained(tmp_path / "hf")


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_exported_tokenizer_round_trips_the_corpus(kind, tiny_poetry_dir, tiny_data, tmp_path):
    """Guards the tokenizer export: transformers' AutoTokenizer gives tianci's ids for the whole
    corpus and decodes them back to the same text (char table as a merge-less BPE; byte-level BPE)."""
    from tianci import corpus as C
    from tianci.tokenizer import load_tokenizer
    from tianci.interop.tokens import TOKENIZER_CONFIG, hf_tokenizer_json

    data = tiny_data
    if kind == "bpe":
        data = tmp_path / "bpe"
        poems = C.load_poems(tiny_poetry_dir)
        C.build(C.Corpus([p.text() for p in poems], str(tiny_poetry_dir), poems), data, tokenizer="bpe",
                vocab_size=300)
    tok = load_tokenizer(data / "tokenizer.json")
    out = tmp_path / "tok"
    out.mkdir()
    (out / "tokenizer.json").write_text(hf_tokenizer_json(tok), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG), encoding="utf-8")
    hf = transformers.AutoTokenizer.from_pretrained(out)
    text = (data / "ci.txt").read_text(encoding="utf-8")
    ids = hf(text, add_special_tokens=False).input_ids
    assert ids == tok.encode(text)
    assert hf.decode(ids) == text


@pytest.mark.parametrize("case", ["ci-cpu", "layernorm", "swiglu", "qknorm"])
def test_export_import_round_trip_is_bit_identical(case, runs, tmp_path):
    """Guards the way back: export -> `tianci import` gives a run with the same config and
    bit-identical weights (also the loop attention layout and untied heads)."""
    run_dir = runs(case, 3)
    assert main(["export", "--run", str(run_dir), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert main(["import", "--from", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    a, b = load_run(run_dir), load_run(tmp_path / "back")
    assert a.preset.model == b.preset.model
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.tokenizer.to_dict() == b.tokenizer.to_dict() if a.tokenizer.kind == "char" else True


@pytest.mark.parametrize("preset, switches, param", [
    ("bigram", {}, "attn"),
    ("blocks", {}, "residual"),
    ("ci-cpu", {"logit_softcap": 30.0}, "logit_softcap"),
    ("ci-cpu", {"qk_norm": True}, "qk_norm"),
    ("nanogpt-cpu", {"mlp_act": "swiglu"}, "mlp_act"),
    ("nanogpt-cpu", {"pos": "rope"}, "pos"),
    ("ci-cpu", {"x0_lambdas": True}, "x0_lambdas"),  # issue 16: to_hf would drop the lambdas silently
    ("nanogpt-cpu", {"value_embeds": True}, "value_embeds"),
])
def test_unexportable_config_is_refused_naming_the_switch(preset, switches, param):
    """Guards the refusal: a config no architecture represents exactly raises ExportError whose
    param names the switch to change (never a silently different model)."""
    cfg = load_preset(preset).model
    for k, v in switches.items():
        setattr(cfg, k, v)
    with pytest.raises(arch.ExportError) as e:
        arch.choose(cfg)
    assert e.value.param == param and param in str(e.value)


def test_cli_export_refusal_is_one_line(runs, tiny_data, tmp_path, capsys):
    """Guards the CLI: an unexportable run (the bigram rung) gives one error line and exit 2."""
    run_dir = _train("bigram", {}, tiny_data, tmp_path / "bigram", 1)
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "attn" in err[0]
    assert not (tmp_path / "hf").exists()


# ----------------------------------------------------------------------------- llama.cpp

@pytest.mark.parametrize("steps", [0, 3])
@pytest.mark.parametrize("case", ["ci-cpu", "qknorm"])
def test_gguf_runs_in_llama_cpp(case, steps, runs, tiny_data, tmp_path):
    """Guards the GGUF export (tensor names, llama.cpp's interleaved RoPE for arcee vs halves for
    qwen3, the tokenizer inside): llama.cpp tokenizes like tianci and computes its logits to
    LLAMA_CPP_TOL; greedy tokens agree for 50 steps wherever the top two logits are further apart
    than the tolerance allows to swap."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llamacpp extra) is not "
                                    "installed: it compiles llama.cpp, ~25 min on a 2-core CPU")
    from tianci.interop.gguf import export_gguf

    run_dir = runs(case, steps)
    path = tmp_path / "m.gguf"
    export_gguf(run_dir, path)
    r = load_run(run_dir)
    T = r.preset.model.block_size
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=T, logits_all=True, verbose=False, n_threads=1)
    text = (tiny_data / "ci.txt").read_text(encoding="utf-8")[:200]
    assert llm.tokenize(text.encode("utf-8"), add_bos=False) == r.tokenizer.encode(text)
    assert llm.detokenize(r.tokenizer.encode(text)).decode("utf-8") == text
    x = _prompt(tiny_data, r)[:T]
    llm.reset()
    llm.eval(x)
    theirs = torch.tensor(llm.scores[:len(x)])
    with torch.no_grad():
        ours = r.model(torch.tensor([x]))[0][0]
    assert (ours - theirs).abs().max().item() <= LLAMA_CPP_TOL
    seq = x[:3]
    llm.reset()
    llm.eval(seq)
    for _ in range(50):
        with torch.no_grad():
            lo = r.model(torch.tensor([seq]))[0][0, -1]
        top2 = lo.topk(2).values
        nxt = int(llm.scores[llm.n_tokens - 1].argmax())
        if (top2[0] - top2[1]).item() <= 2 * LLAMA_CPP_TOL:
            break  # a near tie: either token is within tolerance
        assert nxt == int(lo.argmax())
        seq.append(nxt)
        llm.eval([nxt])
