"""`tianci bench --speedrun` (tianci.measure.speedrun) on tiny presets that finish in seconds, and
`--target-loss`, the trainer's stop it relies on."""

from __future__ import annotations

import json

from tianci.cli import main

TINY = """
description = "a speedrun smoke-test model"
[model]
block_size = 16
n_embd = 16
n_head = 2
n_layer = 1
[train]
batch_size = 4
max_iters = {iters}
learning_rate = {lr}
min_lr = 0.0
warmup_iters = 1
eval_interval = 2
eval_iters = 1
log_interval = 1
device = "cpu"
dtype = "float32"
"""


def presets(tmp_path, iters: int = 20):
    """A record that learns (lr 1e-2) and a baseline that cannot in its budget (lr 1e-6): both start at
    ln(vocab) ~ 4.4 nats/char, the record goes well below 4.3 in 20 steps, the baseline stays."""
    rec, base = tmp_path / "tiny-record.toml", tmp_path / "tiny-base.toml"
    rec.write_text(TINY.format(iters=iters, lr=1e-2))
    base.write_text(TINY.format(iters=iters, lr=1e-6))
    return str(rec), str(base)


def test_target_loss_stops_the_run_at_the_first_evaluation_that_reaches_it(tiny_data, tmp_path):
    """Guards a speedrun that cannot stop at its target without bending the schedule (--max-time
    follows the clock): --target-loss ends the run at the first evaluation at or below it."""
    rec, _ = presets(tmp_path, iters=1000)
    assert main(["train", "--preset", rec, "--data", str(tiny_data), "--out", str(tmp_path / "run"),
                 "--target-loss", "100", "--no-progress"]) == 0
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0] and recs[0]["val_loss"] <= 100


def test_speedrun_reports_time_to_target_and_a_miss(tiny_data, tmp_path, capsys):
    """Guards the speedrun's report (one race of two tiny runs, each its own `tianci train`): the
    record reaches the target and has its time, step and run directory; the baseline misses it, is
    reported as not reached, stopped by its budget, and the ratio is a lower bound, not a number."""
    rec, base = presets(tmp_path)
    out = tmp_path / "race.json"
    rc = main(["bench", "--speedrun", "--quiet", "--record", rec, "--baseline", base, "--baseline-iters", "0",
               "--target", "4.3", "--data", str(tiny_data), "--speedrun-out", str(tmp_path / "runs"),
               "--json", str(out)])
    assert rc == 0
    res, printed = json.loads(out.read_text()), capsys.readouterr().out
    r, b = res["runs"]["record"], res["runs"]["baseline"]
    assert r["reached"] and r["stopped"] == "target" and r["step"] > 0 and r["val_at_target"] <= 4.3
    assert r["train_s"] > 0 and r["wall_s"] > 0 and (tmp_path / "runs" / "record" / "metrics.jsonl").is_file()
    # the steps' own time: the trainer's clock less its evaluations (at least the one at step 0 ran first)
    assert 0 < r["step_s"] < r["train_s"]
    assert not b["reached"] and b["stopped"] == "budget" and b["best_val"] > 4.3 and b["step"] is None
    assert res["ratio_train_s"] is None and res["ratio_train_s_at_least"] > 0
    assert "tiny-record" in printed and "tiny-base" in printed and "more than" in printed
