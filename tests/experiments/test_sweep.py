"""experiments/sweep.py: spec parsing, overrides, skip/resume, results.jsonl, --print-commands."""

import json
import os
import pathlib

import pytest

from experiments import sweep
from hat_jax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parents[2]
BASE = f"{ROOT}/configs/hat.py:size=test,corpus=toy"
# 8 forced CPU devices (conftest): batch sizes must be multiples of 8.
SPEC = """
def get_sweep():
  common = {"train.steps": 2, "train.batch_size": 8, "data.eval_batch_size": 8, "data.eval_batches": 1,
            "train.eval_every": 2, "train.checkpoint_every": 1, "train.log_every": 1}
  return [dict(name="a", **common), dict(name="b", **common, **{"model.backbone.d_model": 32,
                                                                 "model.backbone.num_heads": 2})]
"""


def _write_spec(tmp_path, text=SPEC, base=True):
  path = tmp_path / "spec.py"
  path.write_text((f"BASE_CONFIG = {BASE!r}\n" if base else "") + text)
  return str(path)


def test_load_sweep_and_validation(tmp_path):
  runs, base = sweep.load_sweep(_write_spec(tmp_path))
  assert [r["name"] for r in runs] == ["a", "b"] and base == BASE
  with pytest.raises(ValueError, match="duplicate run name"):
    sweep.load_sweep(_write_spec(tmp_path, "def get_sweep():\n  return [{'name': 'x'}, {'name': 'x'}]\n"))
  with pytest.raises(ValueError, match="get_sweep"):
    sweep.load_sweep(_write_spec(tmp_path, "X = 1\n"))
  with pytest.raises(ValueError, match="non-empty 'name'"):
    sweep.load_sweep(_write_spec(tmp_path, "def get_sweep():\n  return [{'train.steps': 3}]\n"))
  with pytest.raises(FileNotFoundError):
    sweep.load_sweep(str(tmp_path / "missing.py"))


def test_overrides_type_checked_and_unknown_keys():
  config = sweep.run_config(BASE, {"name": "x", "train.steps": 7, "model.backbone.d_model": 48})
  assert config.train.steps == 7 and config.model.backbone.d_model == 48
  with pytest.raises(KeyError, match="no field"):
    sweep.run_config(BASE, {"name": "x", "train.nonexistent": 1})
  with pytest.raises(KeyError, match="no field 'nope'"):
    sweep.run_config(BASE, {"name": "x", "nope.steps": 1})


def test_repo_sweep_specs_parse():
  for spec in ("hat_scaling", "bytes_scaling"):
    runs, base = sweep.load_sweep(str(ROOT / "configs" / "sweeps" / f"{spec}.py"))
    assert len(runs) >= 5
    config = sweep.run_config(str(ROOT / base), runs[0])  # every override names an existing field
    assert config.train.steps == runs[0]["train.steps"]


@pytest.mark.slow  # two real training runs and a fitted report: minutes on 2 cores
def test_run_skip_resume_results_and_commands(tmp_path, monkeypatch, capsys):
  spec, workdir = _write_spec(tmp_path), str(tmp_path / "work")
  runs, _ = sweep.load_sweep(spec)

  # Partial run "a": stop after step 1 (checkpointed), no record yet; then resume to the end.
  assert sweep.run_one(BASE, runs[0], workdir, stop_at_step=1) is None
  assert not os.path.exists(os.path.join(workdir, "a", sweep.FINAL))
  capsys.readouterr()
  assert sweep.main(["--sweep", spec, "--workdir", workdir, "--print-commands"]) == 0
  printed = capsys.readouterr().out.strip().splitlines()
  assert len(printed) == 2 and "--only=a --no-report" in printed[0] and "--only=b" in printed[1]

  assert sweep.main(["--sweep", spec, "--workdir", workdir, "--no-report"]) == 0
  with open(os.path.join(workdir, sweep.RESULTS)) as f:
    records = [json.loads(line) for line in f]
  assert [r["name"] for r in records] == ["a", "b"]
  a, b = records
  assert a["model"] == "hat" and a["steps"] == 2 and a["bytes"] == 2 * 8 * 64 and a["words"] == 2 * 8 * 24
  assert 0 < a["params_non_embedding"] < a["params_total"]
  assert a["params_backbone"] + a["params_byte_level"] == a["params_non_embedding"]
  assert b["params_backbone"] < a["params_backbone"]  # width 32 vs 64
  assert a["flops"] == pytest.approx(6 * (a["params_byte_level"] * a["bytes"] + a["params_backbone"] * a["words"]))
  assert a["val_loss"] > 0
  metrics = [json.loads(l) for l in open(os.path.join(workdir, "a", "metrics.jsonl"))]
  assert [m["step"] for m in metrics if m["split"] == "train"] == [1, 2]  # resumed, not restarted

  # Finished runs are skipped: training again would fail loudly.
  monkeypatch.setattr(trainer, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
  assert sweep.main(["--sweep", spec, "--workdir", workdir, "--no-report"]) == 0
  capsys.readouterr()
  assert sweep.main(["--sweep", spec, "--workdir", workdir, "--print-commands"]) == 0
  assert capsys.readouterr().out.strip() == ""  # nothing left to launch
  with open(os.path.join(workdir, sweep.RESULTS)) as f:
    assert len(f.readlines()) == 2  # rewritten, not appended twice
  assert sweep.main(["--sweep", spec, "--workdir", workdir, "--only", "zzz"]) == 2
