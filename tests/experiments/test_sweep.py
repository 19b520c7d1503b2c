"""hat_jax/sweep.py: spec parsing, overrides, skip/resume, results.jsonl, --print-commands, TPU launches."""

import json
import os
import pathlib
import shlex
import subprocess

import pytest
from etils import epath

from hat_jax import launch_tpu
from hat_jax import sweep
from hat_jax.train import flops
from hat_jax.train import trainer
from tests.fakes import fake_gcs

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
  with pytest.raises(KeyError, match="Override 'train.nonexistent': config has no field 'train.nonexistent'"):
    sweep.run_config(BASE, {"name": "x", "train.nonexistent": 1})
  with pytest.raises(KeyError, match="no field 'nope.steps'"):
    sweep.run_config(BASE, {"name": "x", "nope.steps": 1})
  with pytest.raises(KeyError, match='Did you mean "steps"'):  # ml_collections' suggestion for a misspelt leaf
    sweep.run_config(BASE, {"name": "x", "train.stpes": 1})
  with pytest.raises(KeyError, match="no field 'train.steps.x'"):  # a path through a leaf
    sweep.run_config(BASE, {"name": "x", "train.steps.x": 1})
  # A spec's values keep the field's type: an int sets a float field, a str cannot set an int one.
  config = sweep.run_config(BASE, {"name": "x", "train.learning_rate": 1})
  assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
  with pytest.raises(TypeError, match="cannot be casted"):
    sweep.run_config(BASE, {"name": "x", "train.steps": "7"})


def test_apply_overrides_adds_no_field_and_keeps_the_lock_state():
  """update_from_flattened_dict adds unknown leaves to an unlocked ConfigDict; the sweep locks the
  config around it, and hands it back as locked or unlocked as it came."""
  config = sweep.load_config(BASE)
  assert not config.is_locked
  with pytest.raises(KeyError):
    sweep.apply_overrides(config, {"train.nonexistent": 1})
  assert "nonexistent" not in config.train and not config.is_locked
  config.new_field = 1  # still unlocked: callers may add fields, as before
  config.lock()
  sweep.apply_overrides(config, {"name": "x", "train.steps": 5})  # 'name' is the run's, not a field
  assert config.train.steps == 5 and config.is_locked and "name" not in config


def test_command_line_overrides_parsed_as_the_field_type():
  extra = sweep.parse_overrides(["train.steps=9", "train.learning_rate=0.5", "model.backbone.d_model=32"])
  config = sweep.run_config(BASE, {"name": "x", "train.steps": 7, "model.backbone.d_model": 48}, extra)
  assert config.train.steps == 9 and config.model.backbone.d_model == 32  # after the spec's own keys
  assert config.train.learning_rate == 0.5
  with pytest.raises(ValueError, match="train.steps is a int, got 'many'"):
    sweep.run_config(BASE, {"name": "x"}, {"train.steps": "many"})
  with pytest.raises(KeyError, match='(?s)no field \'train.stpes\'.*Did you mean "steps"'):  # the spec keys' message
    sweep.run_config(BASE, {"name": "x"}, {"train.stpes": "9"})
  with pytest.raises(ValueError, match="expected KEY=VALUE"):
    sweep.parse_overrides(["train.steps"])


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
  assert a["flops_exact"] == pytest.approx(2 * flops.training_flops(sweep.run_config(BASE, runs[0]))["train"])
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



def _record(name, model="hat", steps=2, **extra):
  return {"name": name, "model": model, "params_non_embedding": 1000, "params_total": 1200, "flops": 1e9,
          "bytes": 1e4, "steps": steps, "val_loss": 3.0, "val_loss_nats": 2.0, "val_word_accuracy": 0.1,
          "wall_s": 1.0, **extra}


def _finish(workdir, record):
  """Marks a run finished the way run_one does (its final_metrics.json holds the record)."""
  path = epath.Path(workdir) / record["name"] / sweep.FINAL
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"record": record}))


HAT_SPEC = "configs/sweeps/hat_scaling.py"  # repo-relative: the TPU workers run it inside their clone
TPU = ["--launcher=tpu", "--tpu=my-v5p-64", "--zone=us-east5-a"]


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)  # HAT_SPEC and its BASE_CONFIG are repo-relative, as the sweep is run


def test_print_commands_on_a_gcs_workdir_skip_finished_runs(tmp_path, capsys):
  runs, base = sweep.load_sweep(str(ROOT / HAT_SPEC))
  workdir = "gs://bucket/scaling"
  with fake_gcs(tmp_path):
    _finish(workdir, _record(runs[0]["name"]))
    assert sweep.main([f"--sweep={HAT_SPEC}", f"--workdir={workdir}", "--override=mesh.fsdp=4", "--print-commands"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert [shlex.split(line)[-3:] for line in lines] == [
      [f"--only={r['name']}", "--override=mesh.fsdp=4", "--no-report"] for r in runs[1:]]
  assert shlex.split(lines[0])[:6] == ["python", "-m", "hat_jax.sweep", f"--config={base}", f"--sweep={HAT_SPEC}",
                                       f"--workdir={workdir}"]
  assert (tmp_path / "bucket" / "scaling" / runs[0]["name"] / sweep.FINAL).exists()  # the fake bucket is real


def test_tpu_launch_commands_dry_run_end_to_end(tmp_path, capsys):
  """Each printed launch parses through launch_tpu's own parser, and its workers' command through the
  sweep's: the right --only run, the sweep's overrides and the launcher's multi-slice mesh override."""
  runs, base = sweep.load_sweep(str(ROOT / HAT_SPEC))
  workdir = "gs://bucket/scaling"
  with fake_gcs(tmp_path):
    _finish(workdir, _record(runs[0]["name"]))
    assert sweep.main([f"--sweep={HAT_SPEC}", f"--workdir={workdir}", *TPU, "--override=mesh.fsdp=4",
                       "--launcher-arg=--num-slices=2", "--launcher-arg=--setup=", "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(runs) - 1
    for run, line in zip(runs[1:], lines):
      argv = shlex.split(line)
      assert argv[:2] == ["python", "tools/launch_tpu.py"]
      assert launch_tpu.main(argv[2:] + ["--dry-run"]) == 0
      gcloud = [shlex.split(g) for g in capsys.readouterr().out.strip().splitlines()]
      assert [g[5] for g in gcloud] == ["my-v5p-64-0", "my-v5p-64-1"]  # one ssh per slice
      remote = shlex.split(next(a for a in gcloud[0] if a.startswith("--command=")).removeprefix("--command="))
      at = remote.index("hat_jax.sweep")
      assert remote[at - 2:at] == ["python3", "-m"]
      job = remote[at + 1:]
      assert job == [f"--config={base}", f"--sweep={HAT_SPEC}", f"--workdir={workdir}", f"--only={run['name']}",
                     "--no-report", "--override=mesh.fsdp=4", "--override=mesh.dcn_data=2"]
      # What the workers run is a valid sweep job for exactly that run.
      assert sweep.main(job + ["--print-commands"]) == 0
      local = capsys.readouterr().out.strip().splitlines()
      assert len(local) == 1 and f"--only={run['name']}" in local[0]


def test_tpu_launcher_runs_the_launches_in_turn(tmp_path, monkeypatch, capsys):
  runs, _ = sweep.load_sweep(str(ROOT / HAT_SPEC))
  started = []

  class FakeSsh:  # stands in for `gcloud ... ssh`: records the launch, returns at once
    def __init__(self, cmd):
      started.append(cmd)
      self.rc = 1 if len(started) == 3 else 0

    def wait(self):
      return self.rc

  monkeypatch.setattr(subprocess, "Popen", FakeSsh)
  args = [f"--sweep={HAT_SPEC}", "--workdir=gs://bucket/scaling", *TPU, "--launcher-arg=--setup=", "--no-report"]
  with fake_gcs(tmp_path):
    assert sweep.main(args + [f"--only={runs[0]['name']},{runs[1]['name']}"]) == 0
    assert [f"--only={r['name']}" in c[-1] for r, c in zip(runs, started)] == [True, True]
    capsys.readouterr()
    assert sweep.main(args) == 1  # the third ssh fails: the sweep stops there, with its status
  assert len(started) == 3
  err = capsys.readouterr().err
  assert f"launch 1/{len(runs)} exited with 1" in err and "Rerun the same sweep command" in err


@pytest.mark.parametrize("args, message", [
    (["--launcher=tpu", "--tpu=t"], "--launcher=tpu needs --tpu=NAME and --zone=ZONE"),
    (["--tpu=t", "--zone=z"], "only apply with --launcher=tpu"),
    (TPU + ["--collect"], "--collect reads the workdir here"),
    (["--override=train.nonexistent=1", "--print-commands"], "no field 'train.nonexistent'"),
])
def test_launcher_and_override_errors(args, message, capsys):
  assert sweep.main([f"--sweep={HAT_SPEC}", "--workdir=gs://bucket/scaling", *args]) == 2
  assert message in capsys.readouterr().err


def test_bad_launcher_arg_stops_before_anything_is_printed(tmp_path, capsys):
  with fake_gcs(tmp_path), pytest.raises(SystemExit) as exit_info:
    sweep.main([f"--sweep={HAT_SPEC}", "--workdir=/local/dir", *TPU, "--print-commands"])
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  assert captured.out == "" and "must be a gs:// path" in captured.err


def test_gcs_workdir_without_backend_errors_clearly(capsys):
  assert sweep.main([f"--sweep={HAT_SPEC}", "--workdir=gs://bucket/scaling", "--print-commands"]) == 2
  assert "pip install gcsfs" in capsys.readouterr().err


def test_record_flops_6nd_and_exact(monkeypatch):
  params = {"params_total": 5000, "params_non_embedding": 4000, "params_backbone": 1000, "params_byte_level": 3000}
  monkeypatch.setattr(sweep, "count_params", lambda config: dict(params))
  config = sweep.run_config(BASE, {"name": "x", "train.steps": 3})
  record = sweep.make_record("x", config, {"eval/bits_per_byte": 2.5}, 1.0)
  assert record["flops"] == flops.six_nd_flops(config, params)
  assert record["flops_exact"] == pytest.approx(3 * flops.training_flops(config)["train"])
  assert record["bytes"] == 3 * config.train.batch_size * config.data.seq_bytes and "words" in record
  monkeypatch.setattr(flops, "step_flops_or_none", lambda *a, **k: None)  # a task without an exact count
  assert "flops_exact" not in sweep.make_record("x", config, {"eval/bits_per_byte": 2.5}, 1.0)


def test_collect_and_report_on_gcs_with_old_records(tmp_path, capsys):
  """--collect on a gs:// workdir rebuilds results.jsonl and the report; records written before
  flops_exact existed still load (their table cell is n/a)."""
  workdir = "gs://bucket/scaling"
  with fake_gcs(tmp_path):
    for i, n in enumerate((1000, 2000, 4000, 8000)):
      extra = {"flops_exact": 2e9} if i else {}  # the first run predates flops_exact
      _finish(workdir, _record(f"r{i}", params_non_embedding=n, flops=6e4 * n, val_loss=3 + 100 / n ** 0.5, **extra))
    assert sweep.main([f"--sweep={HAT_SPEC}", f"--workdir={workdir}", "--collect", "--bootstrap=0"]) == 0
  bucket = tmp_path / "bucket" / "scaling"
  assert [json.loads(l)["name"] for l in (bucket / sweep.RESULTS).read_text().splitlines()] == ["r0", "r1", "r2", "r3"]
  assert (bucket / "report" / "report.md").exists() and (bucket / "sweep.md").exists()
  table = capsys.readouterr().out
  assert "| r0 | hat | 1,000 | 2 | 1e+04 | 6e+07 | n/a |" in table and "| 2e+09 |" in table


def test_fixed_d_budget_is_the_most_used_step_count():
  recs = [{"model": "hat", "steps": s} for s in (60, 150, 150, 150, 300, 300)] + [
      {"model": "bytes", "steps": s} for s in (60, 60, 300, 300)]
  assert sweep.fixed_d_steps(recs) == {"hat": 150, "bytes": 300}  # ties go to the larger budget


def test_collect_backfills_exact_flops_from_the_stored_config(tmp_path):
  run = {"name": "old", "train.steps": 3}
  path = tmp_path / "old" / sweep.FINAL
  path.parent.mkdir()
  path.write_text(json.dumps({"config_base": BASE, "overrides": run, "record": _record("old", steps=3)}))
  _finish(str(tmp_path), _record("no_config"))  # nothing to rebuild it from: kept as stored
  by_name = {r["name"]: r for r in sweep.collect(str(tmp_path))}
  expected = 3 * flops.training_flops(sweep.run_config(BASE, run))["train"]
  assert by_name["old"]["flops_exact"] == pytest.approx(expected)
  assert "flops_exact" not in by_name["no_config"]
