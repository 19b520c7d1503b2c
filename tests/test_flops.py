"""Analytic FLOPs (hat_jax.train.flops) per model family against XLA's cost analysis and against the
matmuls of the traced training step, hand-computed counts for one small config per family, and the
MFU / peak-table logic."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core

from configs import block_transformer as block_config
from configs import bytes as bytes_config
from configs import hat as hat_config
from configs import vanilla_lm as vanilla_config
from configs import var as var_config
from hat_jax.losses import token_nll
from hat_jax.models.layers import StackConfig
from hat_jax.data import blocks
from hat_jax.data.batching import stack_rows
from hat_jax.train import flops, registry

# One tiny config per family (and per Block Transformer decoding): (config module, config arg, model
# overrides).
FAMILIES = {
    "hat": (hat_config, "size=test,corpus=toy", {}),
    "hat_paper": (hat_config, "size=test,corpus=toy,variant=paper", {}),
    "bytes": (bytes_config, "size=test,corpus=toy", {}),
    "block_prefix": (block_config, "size=tiny", {"decoding": "prefix"}),
    "block_summation": (block_config, "size=tiny", {"decoding": "summation"}),
    "block_cross_attention": (block_config, "size=tiny", {"decoding": "cross_attention"}),
    "vanilla": (vanilla_config, "size=tiny", {}),
    "var": (var_config, "size=tiny", {}),
}

# XLA also counts elementwise work (norms, RoPE, softmax and the attention mask, SwiGLU, AdaLN
# modulation, the loss) that the analytic matmul count leaves out, so analytic / XLA sits below 1 by
# that share. The matmuls themselves are pinned exactly by test_analytic_equals_traced_matmuls, so this
# band only has to hold the elementwise share: each lower bound is the ratio measured here minus ~0.03
# (measured: hat 0.934, hat_paper 0.934, bytes 0.952, block 0.955 / 0.957 / 0.959 (prefix / summation /
# cross-attention), vanilla 0.935, var 0.860). VAR's is lowest: with head_dim 16 and width 32 the dense
# 130 x 130 softmax and mask (several elementwise FLOPs per pair and head, against 4 x 16 of matmul) and
# the per-token LayerNorm / AdaLN modulation are a larger share; at configs/var.py:small the ratio is
# 0.958. Wider models shrink the share (hat tiny 0.981, block small 0.986). Upper bound 1: XLA executes
# every counted matmul (the one exception, VAR's word_embed input gradient, is 0.3% of its step), so
# analytic above XLA would mean a term that does not run.
XLA_RATIO_LOWER = {"hat": 0.90, "hat_paper": 0.90, "bytes": 0.92, "block_prefix": 0.92,
                   "block_cross_attention": 0.92, "vanilla": 0.90, "var": 0.83}


def _config(family):
  module, arg, overrides = FAMILIES[family]
  config = module.get_config(arg)
  for key, value in overrides.items():
    config.model[key] = value
  return config


def _block_rows(config):
  """Block-aligned rows of random bytes, as `DocumentWindows` lays them out (no corpus needed)."""
  rng = np.random.default_rng(0)
  s, lb = int(config.data.seq_len), int(config.data.block_len)
  rows = [blocks.aligned_row([rng.integers(0, 256, 3 * s, dtype=np.uint8)], s, lb, [i % lb])
          for i in range(int(config.train.batch_size))]
  return {k: jnp.asarray(v) for k, v in stack_rows(rows).items()}


def _training_step(family):
  """(config, value_and_grad fn of the loss w.r.t. params, its args, the batch whose shapes flops reads).

  VAR: the VAR model's loss on given f_hat inputs, without the frozen tokenizer's `var_inputs` that
  `VARTask.loss` computes first (not counted by hat_jax.train.flops; no gradient flows through it)."""
  config = _config(family)
  task = registry.make_task(config)
  params = jax.eval_shape(lambda r: nn.unbox(task.init_params(r)), jax.random.key(0))
  if config.task == "var":
    cfg, b = task.var_cfg, int(config.train.batch_size)
    batch = {"tokens": jnp.zeros((b, cfg.seq_len), jnp.int32), "labels": jnp.zeros((b,), jnp.int32)}
    x_in = jnp.zeros((b, cfg.seq_len - 1, cfg.z_channels), jnp.float32)

    def loss(p, batch, x_in):
      return jnp.mean(token_nll(task.model.apply(p, batch["labels"], x_in), batch["tokens"]))
    return config, jax.value_and_grad(loss), (params, batch, x_in), batch
  if config.task in ("block_transformer", "vanilla_lm"):
    batch = _block_rows(config)
  else:
    batch = {k: jnp.asarray(v) for k, v in next(task.train_iterator(0)).items()}
  return config, jax.value_and_grad(lambda p, b: task.loss(p, b, None)[0]), (params, batch), batch


def _xla_flops(fn, args):
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis["flops"])


def _matmul_flops(jaxpr, times=1):
  """2 * M * K * N summed over every dot_general of a jaxpr, sub-jaxprs included (a scan's body
  `length` times): the matmul FLOPs the traced program asks for, remat recomputation included."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += times * 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[i] for i in contracting])
    inner = times * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(sub, jex_core.ClosedJaxpr):
          total += _matmul_flops(sub.jaxpr, inner)
        elif isinstance(sub, jex_core.Jaxpr):
          total += _matmul_flops(sub, inner)
  return total


def _traced_matmul_flops(fn, args):
  return _matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _not_traced_matmuls(config, batch, analytic):
  """Analytic terms the traced step has no dot_general for, by design (documented in flops.py):
  the tfree HAT pool's weighted sum (2*S*D per row, x3: an elementwise product and a segment sum) and
  VAR's word_embed input gradient (1 x forward: its input is data, so the backward skips it)."""
  if config.task == "hat" and config.model.variant == "tfree":
    b, s = batch["bytes"].shape
    return 3 * b * 2 * s * config.model.backbone.d_model
  if config.task == "var":
    return analytic["forward/embed"]
  return 0.0


@pytest.mark.parametrize("family", list(FAMILIES))
def test_analytic_equals_traced_matmuls(family):
  """Every matmul of the traced training step (forward + backward) is in the analytic count, exactly."""
  config, fn, args, batch = _training_step(family)
  analytic = flops.training_flops(config, batch, attention="xla")
  traced = _traced_matmul_flops(fn, args)
  assert analytic["train"] - _not_traced_matmuls(config, batch, analytic) == pytest.approx(traced, rel=1e-9), (
      family, analytic, traced)


# Summation decoding is covered by the traced-matmul test alone (its token decoder is the prefix one's
# minus the prefix slots): one compile fewer.
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "block_summation"])
def test_analytic_matches_xla_cost_analysis(family):
  config, fn, args, batch = _training_step(family)
  counted = _xla_flops(fn, args)
  analytic = flops.training_flops(config, batch, attention="xla")
  ratio = analytic["train"] / counted
  assert XLA_RATIO_LOWER[family] <= ratio <= 1.0, (family, ratio, analytic, counted)
  # The MFU convention counts only unmasked attention pairs: never more than what XLA executes.
  assert flops.training_flops(config, batch)["train"] < analytic["train"]


def test_scan_and_remat_leave_model_flops_unchanged():
  """Model FLOPs ignore how a stack runs; the traced step of a scanned, fully rematerialised stack asks
  for the recomputation on top (most of one forward of the stack: JAX skips recomputing matmuls whose
  outputs the backward does not read: here 0.80 of a forward), which MFU leaves out."""
  config = bytes_config.get_config("size=test,corpus=toy")
  config.model.stack.num_layers = 2
  plain = flops.training_flops(config, attention="xla")
  config.model.stack.scan, config.model.stack.remat = True, "full"
  assert flops.training_flops(config, attention="xla") == plain
  task = registry.make_task(config)
  params = jax.eval_shape(lambda r: nn.unbox(task.init_params(r)), jax.random.key(0))
  batch = {k: jnp.asarray(v) for k, v in next(task.train_iterator(0)).items()}
  traced = _traced_matmul_flops(jax.value_and_grad(lambda p, b: task.loss(p, b, None)[0]), (params, batch))
  assert plain["train"] + 0.5 * plain["forward/stack"] < traced <= plain["train"] + plain["forward/stack"]


def test_hat_levels_and_batch_shapes():
  config = hat_config.get_config("size=test,corpus=toy")
  b, s, w = 4, int(config.data.seq_bytes), int(config.data.seq_words)
  shapes = {"bytes": jax.ShapeDtypeStruct((b, s), jnp.int32), "word_lengths": jax.ShapeDtypeStruct((b, w), jnp.int32)}
  out = flops.training_flops(config, shapes)
  assert set(out) == {"train", "forward", *(f"forward/{k}" for k in ("encoder", "pool", "backbone", "decoder", "head"))}
  assert out["train"] == pytest.approx(3 * out["forward"])
  # Shapes come from the batch: twice the word slots change only the word-level terms.
  more_words = flops.training_flops(config, {**shapes, "word_lengths": jax.ShapeDtypeStruct((b, 2 * w), jnp.int32)})
  assert more_words["forward/encoder"] == out["forward/encoder"]
  assert more_words["forward/backbone"] > 2 * out["forward/backbone"]  # linear terms x2, attention x4
  # Without a batch the config's shapes are used.
  assert flops.training_flops(config)["train"] == pytest.approx(out["train"])
  paper = hat_config.get_config("size=test,corpus=toy,variant=paper")
  assert flops.training_flops(paper, shapes)["train"] > 0


def test_attention_pair_conventions():
  assert flops.attention_pairs(8) == 36  # causal: 8 * 9 / 2
  assert flops.attention_pairs(8, causal=False) == 64
  assert flops.attention_pairs(8, window=3) == 1 + 2 + 3 * 6
  assert flops.attention_pairs(8, attention="xla") == 64
  # Bytes baseline (full causal): XLA-path minus MFU count is exactly the masked upper triangle.
  config = bytes_config.get_config("size=test,corpus=toy")
  st = config.model.stack
  s, b = int(config.data.seq_bytes), int(config.train.batch_size)
  gap = flops.training_flops(config, attention="xla")["train"] - flops.training_flops(config)["train"]
  assert gap == 3 * b * st.num_layers * 4 * st.num_heads * st.head_dim * (s * s - s * (s + 1) // 2)
  with pytest.raises(ValueError, match="attention convention"):
    flops.attention_pairs(8, attention="flash")
  # Windowed "xla" attention: the blocked path (key blocks of 16 around each query block of 16) when the
  # stack masks by index, dense otherwise (explicit positions).
  assert flops.attention_pairs(40, window=3, attention="xla") == 3 * 16 * 2 * 16
  assert flops.attention_pairs(40, window=3, attention="xla", blocked=False) == 40 * 40
  # Block-causal (VAR): every key of the own and earlier blocks; dense under "xla".
  assert flops.block_causal_pairs([1, 4]) == 1 + 4 * 5
  assert flops.block_causal_pairs([1, 4], attention="xla") == 25


def test_generic_stack_formula():
  stack = StackConfig(d_model=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16, mlp_dim=128)
  out = flops.transformer_lm_flops(stack, seq_len=10, batch=3, vocab=100, causal=False)
  per_pos = 2 * (4 * 64 * 64) + 6 * 64 * 128  # q, k, v, o + SwiGLU
  expected_stack = 3 * 2 * (10 * per_pos + 4 * 64 * 100)
  assert out["forward/stack"] == expected_stack
  assert out["forward/head"] == 3 * 2 * 10 * 64 * 100


def test_unknown_task_errors_clearly():
  from configs import axial as axial_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"No analytic FLOP formula for task 'axial': implement AxialTask"):
    flops.training_flops(axial_config.get_config("tiny"))
  config = hat_config.get_config("size=test,corpus=toy")
  config.task = "axial"  # a config its task cannot be built from
  with pytest.raises(ValueError, match="task 'axial' cannot be built from this config"):
    flops.training_flops(config)
  assert flops.step_flops_or_none(config) is None
  assert flops.step_flops_or_none(config, {"inputs": jnp.zeros((2, 8))}) is None  # other tasks' batches
  assert flops.step_flops_or_none(hat_config.get_config("size=test,corpus=toy")) > 0
  # A known task whose config lacks what its formula reads (a HAT config relabelled "var" has no
  # tokenizer), or whose batch lacks the array its shapes come from: None, not a crash in the trainer.
  config.task = "var"
  assert flops.step_flops_or_none(config) is None
  assert flops.step_flops_or_none(hat_config.get_config("size=test,corpus=toy"), {"tokens": jnp.zeros((2, 8))}) is None
  with pytest.raises(ValueError, match="convention"):
    flops.training_flops(hat_config.get_config("size=test,corpus=toy"), attention="flash")


@pytest.mark.parametrize("name", ["hat", "bytes", "block_transformer", "vanilla_lm", "var", "axial", "raster_ar",
                                  "vqvae"])
def test_every_config_counts_or_says_none(name):
  """Each config family's default config: a positive count where a formula exists, else None (no crash)."""
  config = importlib.import_module(f"configs.{name}").get_config()
  counted = flops.step_flops_or_none(config)
  if config.task in ("hat", "bytes", "block_transformer", "vanilla_lm", "var", "raster_ar"):  # with a formula
    assert counted > 0
  else:
    assert counted is None


def _stack_fields(stack):
  return (stack.d_model, stack.num_layers, stack.num_heads, stack.num_kv_heads, stack.head_dim, stack.mlp_dim,
          stack.get("window"))


def test_paper_hat_hand_count():
  config = hat_config.get_config("size=test,corpus=toy,variant=paper")
  m = config.model
  assert _stack_fields(m.encoder) == _stack_fields(m.decoder) == (32, 1, 2, 1, 16, 80, 16)
  assert _stack_fields(m.backbone) == (64, 1, 4, 2, 16, 168, None)
  assert config.data.max_word_bytes == 24
  b, s, w = 2, 64, 24
  shapes = {"bytes": jax.ShapeDtypeStruct((b, s), jnp.int32), "word_lengths": jax.ShapeDtypeStruct((b, w), jnp.int32)}
  out = flops.training_flops(config, shapes)
  n = 25  # [W] + 24 bytes per word, and [p] + 24 bytes: the stacks' window 16 is NOT applied per word
  byte_pos = 2 * 32 * 16 * (2 * 2 + 2 * 1) + 6 * 32 * 80  # q, o (2 heads) + k, v (1 kv head); SwiGLU
  assert byte_pos == 21504
  encoder = w * (n * byte_pos + n * n * 4 * 2 * 16)  # bidirectional: 25 x 25 pairs
  decoder = w * (n * byte_pos + (n * (n + 1) // 2) * 4 * 2 * 16)  # causal, 325 pairs
  pool = w * (2 * 32 * 64 + 2 * 64 * 32)  # to_backbone, to_decoder
  backbone = w * (2 * 64 * 16 * (2 * 4 + 2 * 2) + 6 * 64 * 168) + (w * (w + 1) // 2) * 4 * 4 * 16
  head = w * n * 2 * 32 * 256
  expected = {"encoder": 14822400, "decoder": 13900800, "pool": 196608, "backbone": 2214912, "head": 9830400}
  assert dict(encoder=encoder, decoder=decoder, pool=pool, backbone=backbone, head=head) == expected
  for level, value in expected.items():
    assert out[f"forward/{level}"] == b * value, level
  assert out["train"] == 3 * b * sum(expected.values())


@pytest.mark.parametrize("decoding, expected_block", [
    # (context, token decoder, head) per decoded block; T = token positions, n_ctx = context vectors
    ("prefix", (2 * 64 * 2 * 32, 5 * 32768 + 15 * 128, 2 * 5 * 32 * 256)),  # T = 2 + 4 - 1, n_ctx = 2
    ("summation", (2 * 64 * 4 * 32, 4 * 32768 + 10 * 128, 2 * 4 * 32 * 256)),  # T = 4, n_ctx = 4
    # cross-attention adds per layer q/o on 4 positions, k/v on 4 context vectors, 4 x 4 pairs
    ("cross_attention", (2 * 64 * 4 * 32, 4 * 32768 + 10 * 128 + (2 * 4 * 32 * 16 * 2 * 2) * 2 + 16 * 128,
                         2 * 4 * 32 * 256)),
])
def test_block_transformer_hand_count(decoding, expected_block):
  config = block_config.get_config("size=tiny")
  config.model.decoding = decoding
  m = config.model
  assert _stack_fields(m.block_decoder)[:6] == (64, 1, 4, 4, 16, 256)
  assert _stack_fields(m.token_decoder)[:6] == (32, 1, 2, 2, 16, 128)  # 32768 matmul FLOPs per position
  assert (m.block_len, m.prefix_len, m.vocab_size, config.data.seq_len, config.train.batch_size) == (4, 2, 256, 32, 4)
  out = flops.training_flops(config)
  blocks = 32 // 4  # 8 blocks per row, 7 of them decoded by the token decoder (block 0 is never a target)
  block_decoder = blocks * (2 * 64 * 16 * (2 * 4 + 2 * 4) + 6 * 64 * 256) + (8 * 9 // 2) * 4 * 4 * 16
  assert block_decoder == 1057792
  context, token, head = expected_block
  expected = {"block_decoder": block_decoder, "context": 7 * context, "token_decoder": 7 * token, "head": 7 * head}
  for level, value in expected.items():
    assert out[f"forward/{level}"] == 4 * value, level
  assert out["train"] == 3 * 4 * sum(expected.values())
  # The lookup-concat embedder is a gather: no term. Token-decoder attention is the same in both conventions
  # only for cross-attention pairs; causal self-attention pairs grow to T x T under "xla".
  xla = flops.training_flops(config, attention="xla")
  t = 5 if decoding == "prefix" else 4
  assert xla["forward/token_decoder"] - out["forward/token_decoder"] == 4 * 7 * (t * t - t * (t + 1) // 2) * 128


def test_vanilla_lm_hand_count():
  config = vanilla_config.get_config("size=tiny")
  assert _stack_fields(config.model.decoder)[:6] == (32, 1, 2, 2, 16, 128)
  b, s = 3, 32
  out = flops.training_flops(config, {"tokens": jax.ShapeDtypeStruct((b, s), jnp.int32)})
  stack = s * (2 * 32 * 16 * (2 * 2 + 2 * 2) + 6 * 32 * 128) + (s * (s + 1) // 2) * 4 * 2 * 16
  assert (stack, 2 * s * 32 * 256) == (1116160, 524288)
  assert out["forward/stack"] == b * 1116160 and out["forward/head"] == b * 524288
  assert out["train"] == 3 * b * (1116160 + 524288)
  # A windowed vanilla LM passes explicit positions, so its "xla" attention stays dense S x S.
  config.model.decoder.window = 8
  windowed = flops.training_flops(config, {"tokens": jax.ShapeDtypeStruct((b, s), jnp.int32)}, attention="xla")
  assert windowed["forward/stack"] == b * (s * 32768 + s * s * 128)


def test_var_hand_count():
  config = var_config.get_config("size=tiny")
  assert _stack_fields(config.model.stack)[:6] == (32, 1, 2, 2, 16, 128)
  vq = config.tokenizer.model
  assert (tuple(vq.scales), vq.vocab_size, vq.z_channels, config.train.batch_size) == ((1, 2, 3, 4, 6, 8), 32, 8, 8)
  out = flops.training_flops(config)
  length = 1 + 4 + 9 + 16 + 36 + 64  # 130 tokens per image
  # Block-causal pairs: a token of scale k sees all tokens of scales <= k.
  pairs = 1 * 1 + 4 * 5 + 9 * 14 + 16 * 30 + 36 * 66 + 64 * 130
  assert flops.block_causal_pairs([1, 4, 9, 16, 36, 64]) == pairs == 11323
  expected = {
      "embed": 2 * (length - 1) * 8 * 32,  # word_embed Cvae -> D on the 129 f_hat inputs (sos is the class)
      "adaln": 2 * 32 * 6 * 32 + 2 * 32 * 2 * 32,  # per image, not per token: block AdaLin + head AdaLin
      "blocks": length * (2 * 32 * 16 * (2 * 2 + 2 * 2) + 6 * 32 * 128) + pairs * 4 * 2 * 16,
      "head": 2 * length * 32 * 32,
  }
  assert expected == {"embed": 66048, "adaln": 16384, "blocks": 5709184, "head": 266240}
  for level, value in expected.items():
    assert out[f"forward/{level}"] == 8 * value, level
  assert out["train"] == 3 * 8 * sum(expected.values())
  assert flops.training_flops(config, attention="xla")["forward/blocks"] == 8 * (length * 32768 + length**2 * 128)
  # Shapes from the batch: the image count; a token length that is not the tokenizer's L is an error.
  assert flops.training_flops(config, {"tokens": jnp.zeros((2, length), jnp.int32)})["train"] == out["train"] / 4
  with pytest.raises(ValueError, match="VAR tokens"):
    flops.training_flops(config, {"tokens": jnp.zeros((2, 64), jnp.int32)})


def test_six_nd_per_level():
  config = hat_config.get_config("size=test,corpus=toy")
  config.train.steps, config.train.batch_size = 3, 8
  rows = 3 * 8
  params = {"params_non_embedding": 7, "params_byte_level": 5, "params_backbone": 2}
  # HAT: byte-level params per byte slot, the backbone per word slot, padding included.
  assert flops.six_nd_flops(config, params) == 6 * (5 * rows * config.data.seq_bytes + 2 * rows * config.data.seq_words)
  byte_lm = bytes_config.get_config("size=test,corpus=toy")
  byte_lm.train.steps = 3
  assert flops.six_nd_flops(byte_lm, {"params_non_embedding": 7}) == (
      6 * 7 * 3 * byte_lm.train.batch_size * byte_lm.data.seq_bytes)
  with pytest.raises(ValueError, match="6ND needs the positions each level of task 'vanilla_lm'"):
    flops.six_nd_flops(vanilla_config.get_config("tiny"), params)


def test_describe_peak():
  """The trainer's MFU line names the peak it divides by (the trainer computes MFU inline)."""
  assert "MFU n/a" in flops.describe_peak("cpu")
  for kind, tflops in [("TPU v4", 275), ("TPU v5 lite", 197), ("TPU v5p", 459), ("TPU v6 lite", 918),
                       ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H200", 989)]:
    assert f"MFU against {tflops} TFLOP/s per device" in flops.describe_peak(kind), kind


def test_trainer_logs_analytic_model_flops(tmp_path):
  from hat_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from hat_jax.train import trainer  # pylint: disable=g-import-not-at-top
  config = bytes_config.get_config("size=test,corpus=toy")
  config.train.steps, config.train.log_every, config.train.eval_every = 3, 3, 100
  trainer.train(config, str(tmp_path), devices=jax.devices()[:1])
  record = metrics_lib.read_jsonl(str(tmp_path), "train")[-1]
  expected = flops.training_flops(config)["train"] * record["steps_per_sec"] / 1e12
  assert record["model_tflops_per_sec_per_device"] == pytest.approx(expected)
  assert "mfu" not in record  # CPU: no peak entry, MFU is n/a (the compile line says so)
