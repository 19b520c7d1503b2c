"""Compiling for real TPU topologies on this CPU host (`hat_jax.aot`, `tools/aot_compile.py`).

libtpu (the test extra's `jax[tpu]`) describes TPU chips that are not here; a mesh on them makes XLA's
TPU compiler and the Mosaic compiler build the real per-chip programs. These tests check that the
Pallas kernels lower, partition (shard_map per device) and fit on multi-chip meshes, for the `test`-size
HAT (both variants), Block Transformer, VAR and HMAR configs. The acceptance compiles of the `small` HAT are
@pytest.mark.slow (tens of seconds each on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu", reason="needs libtpu (pip install 'jax[tpu]'; part of the test extra)")

from configs import block_transformer, hat, hmar, var  # noqa: E402
from hat_jax import aot  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pallas(config, **mesh):
  config.model.attention_impl = "pallas"
  for k, v in mesh.items():
    config.mesh[k] = v
  return config


def _assert_compiled_with_kernels(report, steps=("train",)):
  names = [s["name"] for s in report["steps"]]
  for name in steps:
    assert name in names
  for s in report["steps"]:
    assert s["compiled"], f"{s['name']}: {s['error']}"
    assert s["fits"] and 0 < s["peak_bytes"] < s["hbm_bytes"]
  train = report["steps"][0]
  assert train["kernel_calls"] > 0, "the train step should run the Mosaic kernels"
  assert train["xla_flops"] > 0 and train["estimated_seconds"] > 0
  assert report["ok"]


@pytest.mark.parametrize("mesh", [dict(data=16), dict(data=1, fsdp=16),
                                  dict(data=4, tensor=4, indivisible="replicate")],
                         ids=["data16", "fsdp16", "data4xtensor4"])
def test_hat_test_size_compiles_with_mosaic_kernels_on_v5e_4x4(mesh):
  decode = "data" in mesh and mesh["data"] == 16  # the decode steps once: they hold no kernel (dense cache attention)
  report = aot.run(_pallas(hat.get_config("test,corpus=toy"), **mesh), "v5e:4x4", batch_size=16, decode=decode)
  assert report["chips"] == 16 and report["device_kind"] == "TPU v5 lite"
  assert report["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1, **{k: v for k, v in mesh.items() if k != "indivisible"}}
  _assert_compiled_with_kernels(report, ("train", "decode/byte", "decode/word") if decode else ("train",))


@pytest.mark.parametrize("config_fn, decode", [
    (lambda: hat.get_config("test,corpus=toy,variant=paper"), ("decode/word", "decode/decode_word")),
    (lambda: hat.get_config("test,corpus=toy,variant=released"), ("decode/byte", "decode/word")),
    (lambda: block_transformer.get_config("tiny"), ("decode/block", "decode/token")),
    (lambda: var.get_config("tiny"), ("decode/last_scale",)),
    (lambda: hmar.get_config("tiny"), ("decode/last_scale_step",)),  # MaskSpec.blocks in Mosaic
], ids=["hat_paper", "hat_released", "block_transformer", "var", "hmar"])
def test_model_families_compile_with_mosaic_kernels_on_v5p_2x2x2(config_fn, decode):
  report = aot.run(_pallas(config_fn(), data=2, fsdp=4), "v5p:2x2x2", batch_size=8)
  assert report["chips"] == 8
  _assert_compiled_with_kernels(report, ("train",) + decode)


def test_auto_attention_compiles_with_splash_on_v5e_4x4(monkeypatch):
  """attention_impl="auto" for a TPU mesh: splash attention (segment ids, padded lengths) under shard_map."""
  from hat_jax.kernels import auto
  monkeypatch.setattr(auto, "_CHOICES", {})
  config = hat.get_config("test,corpus=toy")
  config.model.attention_impl = "auto"
  config.mesh.data, config.mesh.tensor, config.mesh.indivisible = 4, 4, "replicate"
  report = aot.run(config, "v5e:4x4", batch_size=16, decode=False)
  _assert_compiled_with_kernels(report)
  assert {c.impl for c in auto.choices().values()} == {"splash"}, auto.choices()


def test_multi_slice_mesh_compiles():
  """Two v5e:2x2 slices (DCN between them), data parallel across slices: the hybrid mesh and the
  per-device kernels compile."""
  report = aot.run(_pallas(hat.get_config("test,corpus=toy"), dcn_data=2), "v5e:2x2", num_slices=2, batch_size=8,
                   decode=False)
  assert report["chips"] == 8 and report["num_slices"] == 2 and report["mesh"]["data"] == 8
  _assert_compiled_with_kernels(report)


def _cli(*args):
  env = {**os.environ, "PYTHONPATH": ROOT}
  env.pop("XLA_FLAGS", None)  # the tool compiles for TPU; the 8 forced CPU devices are the tests' own
  return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "aot_compile.py"), *args],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_cli_reports_what_does_not_fit_and_exits_1(tmp_path):
  out = tmp_path / "report.json"
  proc = _cli("--config=configs/hat.py:test,corpus=toy", "--topology=v5litepod-1", "--batch_size=131072",
              "--decode=false", f"--json={out}")
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert "does not fit: needs" in proc.stdout and "on v5litepod-1: train does not fit" in proc.stderr
  report = json.loads(out.read_text())
  train = report["steps"][0]
  # XLA's TPU compiler refuses a program over the chip's usable HBM (a little under 16 GiB on v5e).
  assert train["fits"] is False and train["peak_bytes"] > train["hbm_bytes"] > 15 * 2**30
  assert "RESOURCE_EXHAUSTED" in train["error"] and not report["ok"]
  assert report["command"].startswith("python tools/aot_compile.py --config=configs/hat.py:test")


def test_cli_usage_errors_exit_2():
  proc = _cli("--config=configs/hat.py:test,corpus=toy", "--topology=v5p-7")
  assert proc.returncode == 2 and "ERROR:" in proc.stderr and "v5p" in proc.stderr
  proc = _cli("--config=configs/hat.py:test,corpus=toy", "--topology=v5e:4x4", "--batch_size=6")
  assert proc.returncode == 2 and "does not divide over the 16 batch shards" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("topology, mesh", [
    ("v5e:4x4", dict(data=16)), ("v5e:4x4", dict(data=1, fsdp=16)),
    ("v5e:4x4", dict(data=4, tensor=4, indivisible="replicate")), ("v5p:2x2x2", dict(data=-1))])
def test_hat_small_compiles_with_mosaic_kernels(topology, mesh):
  """The issue's acceptance: HAT `small`, Pallas TPU kernels, under data=16, fsdp=16, data=4 x tensor=4 on
  v5e:4x4 and on v5p:2x2x2 (tensor=4 does not divide `small`'s 6 heads: replicated heads, sharded MLP)."""
  report = aot.run(_pallas(hat.get_config("small,corpus=toy"), **mesh), topology)
  _assert_compiled_with_kernels(report, ("train", "decode/byte", "decode/word"))


def test_checkpoint_fingerprint_compiles_and_reads_only_local_shards():
  from hat_jax import topology  # pylint: disable=g-import-not-at-top
  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top
  spec = topology.parse_topology("v5e:2x2")
  hw = spec.hardware
  read = {}
  for name, mesh in (("replicated", dict(data=4, fsdp=1)), ("fsdp", dict(data=1, fsdp=4))):
    config = hat.get_config("test,corpus=toy")
    config.mesh.update(mesh)
    run = trainer.build(config, devices=topology.devices(spec))
    report = aot.compile_fingerprint(run, aot.Hardware(hw.hbm_bytes, hw.peak_flops, hw.hbm_bandwidth),
                                     log=lambda _: None)
    assert report.ok and report.estimated_seconds > 0, report.error
    read[name] = report.xla_bytes_accessed
  # Each chip reduces the shards it holds: sharding the state 4 ways cuts what a chip reads (the small
  # replicated arrays and XLA's tile padding keep it above a quarter).
  assert read["fsdp"] < 0.6 * read["replicated"], read
