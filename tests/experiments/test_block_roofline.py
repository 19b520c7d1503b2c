"""experiments/block_throughput/roofline.py: the per-byte work model and a tiny end-to-end run."""

import pytest

from configs import block_transformer as block_configs
from configs import vanilla_lm as vanilla_configs
from experiments.block_throughput import roofline
from hat_jax.models.block_transformer import BlockTransformerConfig
from hat_jax.models.decoder_lm import DecoderLMConfig


def _small():
  return (DecoderLMConfig.from_config(vanilla_configs.get_config("small").model),
          BlockTransformerConfig.from_config(block_configs.get_config("small").model))


def test_work_per_byte_matches_hand_count_for_the_small_models():
  vcfg, bcfg = _small()  # 128 wide, 3 layers, 4 heads of 32, MLP 512, L_B 4, prefix 2
  work = roofline.per_byte(vcfg, bcfg, v_slots=2175, b_slots=543)
  layer = 2 * (4 * 128 * 128 + 3 * 128 * 512)  # q, k, v, o + SwiGLU, per position
  head = 2 * 128 * 256
  # 5 token-decoder positions per 4-byte block (2 prefix vectors + 3 fed bytes), each with a head.
  assert work["token_flops"] == pytest.approx(5 * (3 * layer + head) / 4)
  assert work["block_flops"] == pytest.approx((3 * layer + 4 * 3 * 128 * 543) / 4)
  assert work["vanilla_flops"] == pytest.approx(3 * layer + head + 4 * 3 * 128 * 2175)
  assert work["vanilla_bytes"] == 3 * 2 * 2175 * 128 * 4  # 6.7 MB: every slot, k and v, every layer
  assert work["block_bytes"] == 3 * 2 * 543 * 128 * 4 / 4  # read once per 4 bytes


def test_floors_add_compute_and_memory_or_take_the_larger():
  work = dict(vanilla_flops=2e6, vanilla_bytes=6e6, token_flops=1e6, block_flops=1e6, block_bytes=1e6)
  f = roofline.floors_us(work, gflops=100.0, gbps=10.0)  # 1 MFLOP = 10 µs, 1 MB = 100 µs
  assert f["vanilla_serial"] == pytest.approx(20 + 600) and f["vanilla_overlapped"] == pytest.approx(600)
  assert f["block_serial"] == pytest.approx(20 + 100) and f["block_overlapped"] == pytest.approx(100)


def test_tiny_run_reports_consistent_numbers(tmp_path):
  out = roofline.main(["--vanilla=tiny", "--block=tiny", "--prompt_len=8", "--num_new=16", "--vanilla_batch=2",
                       "--block_batch=2", "--iters=2", "--repeats=1", "--big=64", "--read_mib=1",
                       f"--json={tmp_path / 'r.json'}"])
  assert (tmp_path / "r.json").exists()
  assert [r["slots"] for r in out["attention_layouts"]] == [8 + 16 - 1, 2 + 4 - 1]
  for r in out["attention_layouts"]:
    assert r["speedup"] == pytest.approx(r["sequence_major_ms"] / r["head_major_ms"])
  m = out["measured_us"]
  assert m["block"] == pytest.approx(m["token"] + m["block_decoder"]) and m["vanilla"] > 0
  assert out["ratios"]["measured"] == pytest.approx(m["vanilla"] / m["block"])


def test_num_new_must_fill_whole_blocks():
  with pytest.raises(SystemExit, match="multiple of block_len"):
    roofline.main(["--num_new=10"])
