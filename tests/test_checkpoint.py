"""Checkpoints and run directories (tianci.checkpoint): bad files are named, nothing is lost by accident."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tianci.checkpoint import CheckpointError, latest_paths, load_run, save_weights
from tianci.cli import main
from tianci.config import GPTConfig
from tianci.model import GPT



def tiny_flags(data: Path, *extra: str) -> list[str]:
    return ["--preset", "layernorm", "--data", str(data), "--block-size", "16", "--n-embd", "16", "--n-layer", "1",
            "--n-head", "2", "--batch-size", "2", "--eval-iters", "1", "--eval-interval", "1000", "--no-progress",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """A finished 2-step run (read only: copy it before damaging anything)."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["train", *tiny_flags(tiny_data), "--out", str(run), "--max-iters", "2"]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def test_run_dir_layout(trained):
    """Guards: a run directory missing a file that sampling or resuming needs."""
    for name in ("config.json", "tokenizer.json", "metrics.jsonl", "latest.json", "best.safetensors", "best.json"):
        assert (trained / name).is_file(), name
    w, s, step = latest_paths(trained)
    assert w.is_file() and s.is_file() and step == 2
    assert not [p for p in trained.rglob("*.tmp")]  # no temp files left behind
    assert load_run(trained).model.training is False


@pytest.mark.parametrize("which", ["best", "latest"])
def test_truncated_weights_name_the_file(run, which):
    """Guards: a truncated .safetensors surfacing as a raw safetensors/torch exception (or, worse,
    loading garbage) instead of a CheckpointError that names the file."""
    path = run / "best.safetensors" if which == "best" else latest_paths(run)[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=path.name):
        load_run(run, which=which)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=path.name):
        load_run(run, which=which)


def test_foreign_weights_name_the_file(run):
    """Guards: weights from another config loading with strict=False into the wrong model (or a
    bare size-mismatch RuntimeError)."""
    other = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    save_weights(other, run / "best.safetensors")
    with pytest.raises(CheckpointError, match="best.safetensors") as e:
        load_run(run)
    assert "config" in str(e.value)


def test_garbage_training_state_names_the_file(run, capsys):
    """Guards: `--resume` on a corrupt state-*.pt dying in pickle with a traceback."""
    spath = latest_paths(run)[1]
    spath.write_bytes(b"this is not a torch checkpoint")
    assert main(["train", "--resume", str(run), "--max-iters", "3"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (the trainer prints its config to stderr first)
    assert last.startswith("tianci train: error:") and spath.name in last and "Traceback" not in err
    spath.write_bytes(b"")
    assert main(["train", "--resume", str(run), "--max-iters", "3"]) == 2
    assert spath.name in capsys.readouterr().err


def test_foreign_training_state_names_the_file(run, capsys):
    """Guards: a well-formed torch file that is not a tianci state (KeyError deep in the trainer)."""
    spath = latest_paths(run)[1]
    torch.save({"hello": 1}, spath)
    assert main(["train", "--resume", str(run), "--max-iters", "3"]) == 2
    assert spath.name in capsys.readouterr().err


def test_bad_latest_pointer(run):
    """Guards: a corrupt latest.json raising JSONDecodeError instead of naming the file."""
    (run / "latest.json").write_text("{", encoding="utf-8")
    with pytest.raises(CheckpointError, match="latest.json"):
        load_run(run, which="latest")
    (run / "latest.json").unlink()
    with pytest.raises(CheckpointError, match="latest.json"):
        latest_paths(run)


def test_missing_run_dir_and_tokenizer(run, tmp_path):
    """Guards: sampling from a missing run (or one without tokenizer.json) failing with FileNotFoundError."""
    with pytest.raises(CheckpointError, match="config.json"):
        load_run(tmp_path / "nope")
    (run / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_run(run)


def test_existing_run_is_not_overwritten(run, tiny_data, capsys):
    """Guards: `train --out` silently clobbering a trained run: it must refuse and point at
    --resume and --force; --force must then really start over."""
    before = (run / "best.safetensors").read_bytes()
    assert main(["train", *tiny_flags(tiny_data), "--out", str(run), "--max-iters", "1"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--force" in err and "Traceback" not in err
    assert (run / "best.safetensors").read_bytes() == before
    (run / "my-notes.txt").write_text("keep me", encoding="utf-8")
    assert main(["train", *tiny_flags(tiny_data), "--out", str(run), "--max-iters", "1", "--force"]) == 0
    capsys.readouterr()
    assert latest_paths(run)[2] == 1
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 1  # the old run's log is gone, not appended to
    assert sorted(p.name for p in (run / "ckpt").iterdir() if p.name.startswith("model-")) == ["model-0000001.safetensors"]
    assert (run / "my-notes.txt").read_text(encoding="utf-8") == "keep me"  # not ours: never deleted


def test_unrelated_directory_is_never_deleted(tmp_path, tiny_data, capsys):
    """Guards: `train --out DIR --force` wiping a directory that is not a tianci run (a user's home, a data dir)."""
    d = tmp_path / "important"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work", encoding="utf-8")
    (d / "ckpt").mkdir()  # even with a file named like ours
    (d / "ckpt" / "x").write_text("x")
    for extra in ([], ["--force"]):
        assert main(["train", *tiny_flags(tiny_data), "--out", str(d), "--max-iters", "1", *extra]) == 2
        assert "Traceback" not in capsys.readouterr().err
    assert (d / "thesis.tex").read_text(encoding="utf-8") == "years of work" and (d / "ckpt" / "x").exists()
    assert sorted(p.name for p in d.iterdir()) == ["ckpt", "thesis.tex"]


# ----------------------------------------------------------------------------- hardening (issue 10)

def test_users_folder_with_a_config_json_is_never_a_run(tmp_path, tiny_data, capsys):
    """Guards: a folder with any config.json counting as a run, so `train --out DIR --force` deleted the
    user's ckpt/my_model.bin, tb/ and samples.txt. It is refused, --force or not, and nothing changes."""
    d = tmp_path / "mine"
    (d / "ckpt").mkdir(parents=True)
    (d / "tb").mkdir()
    (d / "config.json").write_text('{"lr": 0.1}', encoding="utf-8")
    (d / "ckpt" / "my_model.bin").write_bytes(b"weights")
    (d / "tb" / "events").write_bytes(b"ev")
    (d / "samples.txt").write_text("poems", encoding="utf-8")
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    for extra in ([], ["--force"]):
        assert main(["train", *tiny_flags(tiny_data), "--out", str(d), "--max-iters", "1", *extra]) == 2
        err = capsys.readouterr().err
        assert "not a tianci run directory" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before


def test_force_removes_only_what_the_manifest_lists(run, tiny_data, capsys):
    """Guards: --force deleting files by name pattern: a user's file put into the run's ckpt/ (or beside
    it) survives a restart, and every file tianci wrote is listed in manifest.json."""
    man = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert man["kind"] == "run"
    on_disk = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk <= set(man["owned"])  # everything tianci wrote is recorded
    (run / "ckpt" / "mine.bin").write_bytes(b"user")
    (run / "notes.txt").write_text("keep", encoding="utf-8")
    assert main(["train", *tiny_flags(tiny_data), "--out", str(run), "--max-iters", "1", "--force"]) == 0
    capsys.readouterr()
    assert (run / "ckpt" / "mine.bin").read_bytes() == b"user" and (run / "notes.txt").read_text() == "keep"
    assert latest_paths(run)[2] == 1


def test_run_from_before_manifests_is_adopted(run, tiny_data, capsys):
    """Guards: runs written by an older tianci (no manifest.json) becoming impossible to resume or
    restart; only a folder holding nothing but run files is taken for one."""
    (run / "manifest.json").unlink()
    assert main(["train", "--resume", str(run), "--max-iters", "3", "--no-progress"]) == 0
    capsys.readouterr()
    assert latest_paths(run)[2] == 3 and (run / "manifest.json").is_file()


def test_temp_files_of_a_killed_save_are_cleaned_on_resume(run, capsys):
    """Guards: ckpt/.state-*.tmp files left by a kill during a save piling up forever."""
    junk = [run / "ckpt" / ".state-0000002.pt.abc123.tmp", run / ".latest.json.x1.tmp"]
    for p in junk:
        p.write_bytes(b"half")
    assert main(["train", "--resume", str(run), "--max-iters", "3", "--no-progress"]) == 0
    capsys.readouterr()
    assert not any(p.exists() for p in junk)


def test_full_disk_during_a_checkpoint_keeps_the_last_one(run, monkeypatch):
    """Guards: a full disk during torch.save killing training with a RuntimeError traceback and maybe a
    broken latest.json: it is one RunError naming the file, the last checkpoint still loads, no temp file."""
    import errno

    from tianci import files
    from tianci.checkpoint import Run, load_state
    from tianci.errors import RunError

    r = Run(run)
    model = load_run(run, which="latest").model
    state = load_state(latest_paths(run)[1])
    real_fdopen = files.os.fdopen

    class Full:  # a disk with room for small files (the manifest) but not for weights
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(RunError, match="no space left on the device") as e:
        r.save_checkpoint(model, state, 5)
    assert "ckpt/model-0000005" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.undo()
    w, s, step = latest_paths(run)
    assert step == 2 and load_run(run, which="latest") and load_state(s)["step"] == 2
    assert not list(run.rglob("*.tmp"))


def test_foreign_or_shuffled_tokenizer_is_refused_at_load(run, tmp_path):
    """Guards: a run dir with a foreign tokenizer.json loading (sample failing with an unrelated message,
    the server blaming clients), and a same-size shuffled one printing garbage with exit 0."""
    from tianci.errors import RunError

    tok = json.loads((run / "tokenizer.json").read_text(encoding="utf-8"))
    shuffled = dict(tok, chars=tok["chars"][1:] + tok["chars"][:1])
    (run / "tokenizer.json").write_text(json.dumps(shuffled, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(RunError, match="tokenizer.json.*config.json"):
        load_run(run)
    foreign = dict(tok, chars=tok["chars"] + ["※"])
    (run / "tokenizer.json").write_text(json.dumps(foreign, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(RunError, match="tokenizer.json.*config.json"):
        load_run(run)
    assert RunError.status >= 500  # served, it is the server's own fault


def test_non_finite_weights_are_refused(run):
    """Guards: NaN weights in a checkpoint loading silently (then 'token id 6104 is outside 0..6103'),
    and NaN weights ever being written."""
    from safetensors.torch import load_file, save_file

    from tianci.errors import RunError

    sd = load_file(str(run / "best.safetensors"))
    k = next(iter(sd))
    sd[k][..., 0] = float("nan")
    save_file(sd, str(run / "best.safetensors"))
    with pytest.raises(RunError, match="best.safetensors.*not finite"):
        load_run(run)
    model = load_run(run, which="latest").model
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(RunError, match="not finite"):
        save_weights(model, run / "x.safetensors")
    assert not (run / "x.safetensors").exists()


@pytest.mark.parametrize("case", ["no_preset", "out_is_a_file"])
def test_bad_run_files_are_one_line(run, tmp_path, tiny_data, capsys, case):
    """Guards: tracebacks for config.json without `preset` (KeyError) and `train --out` at an existing
    file: each is one line, exit 2."""
    if case == "no_preset":
        cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
        del cfg["preset"]
        (run / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        argv = ["sample", "--run", str(run), "--max-new-tokens", "2"]
        want = "no 'preset'"
    else:
        f = tmp_path / "a-file"
        f.write_text("x")
        argv = ["train", *tiny_flags(tiny_data), "--out", str(f), "--max-iters", "1"]
        want = "is a file"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_recipe_parameters_survive_save_and_load(tiny_data, tmp_path, capsys):
    """Guards the x0 / residual lambdas and value embeddings (issue 16) being dropped or left at
    their init by a checkpoint: the trained values written by `train` come back from load_run,
    and the loaded model computes what the saved weights say."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    assert main(["train", *tiny_flags(tiny_data, "--x0-lambdas", "--value-embeds", "--n-layer", "2"),
                 "--out", str(run), "--max-iters", "2"]) == 0
    capsys.readouterr()
    saved = load_file(str(run / "best.safetensors"))
    assert {"resid_lambdas", "x0_lambdas", "value_embeds.1.weight"} <= set(saved)
    assert saved["x0_lambdas"].abs().sum() > 0 and saved["value_embeds.1.weight"].abs().sum() > 0  # trained
    loaded = load_run(run)
    cfg = loaded.preset.model
    assert cfg.x0_lambdas and cfg.value_embeds
    sd = loaded.model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in saved.items())
    fresh = GPT(cfg).eval()
    fresh.load_state_dict(saved, strict=not cfg.tie_embeddings)
    idx = torch.randint(0, cfg.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(idx)[0], fresh(idx)[0])
