"""attention_impl="auto": which implementation each backend gets for each mask, and that it is exact.

The choice is a pure function, so every (backend, mask) case is pinned here on CPU. The delegated kernels
are checked against the reference: splash attention in interpret mode here; cuDNN on a GPU
(`tests/kernels/test_gpu_compiled.py`).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hat_jax.kernels import MaskSpec, attention, auto, ops
from hat_jax.models.layers import Stack, StackConfig
from tests.kernels.test_attention import _check_vs_reference, _packed_segments, _qkv

# case -> (spec, q_len, kv_len, head_dim, dtype, explicit positions, segments)
CASES = {
    "causal": (MaskSpec(), 256, 256, 64, "bfloat16", False, False),
    "window": (MaskSpec(window=128), 256, 256, 64, "bfloat16", False, False),
    "chunk": (MaskSpec(chunk=64), 256, 256, 64, "bfloat16", False, False),
    "full": (MaskSpec(causal=False), 256, 256, 64, "bfloat16", False, False),
    "segments": (MaskSpec(window=128), 256, 256, 64, "bfloat16", False, True),
    "var_block_causal": (MaskSpec(), 256, 256, 64, "bfloat16", True, False),  # scale ids as positions
    "explicit_positions": (MaskSpec(window=128), 256, 256, 64, "bfloat16", True, True),
    "cached_decode": (MaskSpec(window=128), 1, 512, 64, "bfloat16", True, True),
    "cross_attention": (MaskSpec(causal=False), 64, 256, 64, "bfloat16", True, True),
    "float32": (MaskSpec(), 256, 256, 64, "float32", False, False),
    "head_dim_256": (MaskSpec(), 256, 256, 256, "bfloat16", False, False),
    "length_200": (MaskSpec(), 200, 200, 64, "bfloat16", False, False),
    "noncausal_chunk": (MaskSpec(causal=False, chunk=64), 256, 256, 64, "bfloat16", False, False),
}

EXPECTED = {  # case -> (cpu, gpu, tpu)
    "causal": ("xla", "cudnn", "splash"),
    "window": ("xla", "cudnn", "splash"),
    "chunk": ("xla", "pallas", "splash"),
    "full": ("xla", "cudnn", "splash"),
    "segments": ("xla", "pallas", "splash"),
    "var_block_causal": ("xla", "pallas", "pallas"),
    "explicit_positions": ("xla", "pallas", "pallas"),
    "cached_decode": ("xla", "xla", "xla"),
    "cross_attention": ("xla", "pallas", "pallas"),
    "float32": ("xla", "pallas", "splash"),
    "head_dim_256": ("xla", "pallas", "splash"),
    "length_200": ("xla", "cudnn", "splash"),
    "noncausal_chunk": ("xla", "pallas", "pallas"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_choice_per_backend_and_mask(case):
  spec, q_len, kv_len, head_dim, dtype, explicit, segments = CASES[case]
  got = tuple(auto.choose(backend, spec, q_len=q_len, kv_len=kv_len, head_dim=head_dim, dtype=dtype,
                          explicit_positions=explicit, segments=segments).impl for backend in ("cpu", "gpu", "tpu"))
  assert got == EXPECTED[case]


def test_a_mask_field_beyond_causal_window_chunk_stays_on_our_kernel(monkeypatch):
  # A future MaskSpec rule (e.g. a static block layout) must never be handed to a vendor kernel that
  # ignores it: anything that is not exactly causal/window/chunk goes to ours.
  import dataclasses

  @dataclasses.dataclass(frozen=True)
  class WiderSpec(MaskSpec):
    blocks: tuple = (1, 4)

  choice = auto.choose("gpu", WiderSpec(), q_len=256, kv_len=256, head_dim=64, dtype="bfloat16",
                       explicit_positions=False, segments=False)
  assert choice.impl == "pallas"


def test_different_query_and_key_segments_stay_on_our_kernel():
  choice = auto.choose("gpu", MaskSpec(), q_len=256, kv_len=256, head_dim=64, dtype="bfloat16",
                       explicit_positions=False, segments=True, same_segments=False)
  assert choice.impl == "pallas"


@pytest.mark.parametrize("case", ["causal", "window", "chunk", "segments", "var_block_causal", "cached_decode"])
def test_auto_on_cpu_equals_reference(case):
  spec, q_len, kv_len, _, _, explicit, segments = CASES[case]
  q_len, kv_len = min(q_len, 40), min(kv_len, 40) if q_len > 1 else 40
  q, k, v, do = _qkv(2, q_len, kv_len, 4, 2, 16, jnp.float32)
  kw = {}
  if explicit:
    kw["q_positions"] = jnp.broadcast_to(jnp.arange(kv_len - q_len, kv_len, dtype=jnp.int32) // 3, (2, q_len))
    kw["kv_positions"] = jnp.broadcast_to(jnp.arange(kv_len, dtype=jnp.int32) // 3, (2, kv_len))
  if segments:
    kw["q_segment_ids"] = _packed_segments(2, q_len, [q_len // 2, q_len // 3]) if q_len > 1 else jnp.ones((2, 1), jnp.int32)
    kw["kv_segment_ids"] = kw["q_segment_ids"] if q_len == kv_len else jnp.ones((2, kv_len), jnp.int32)
  _check_vs_reference(functools.partial(attention, impl="auto"), q, k, v, do, spec, jnp.float32, **kw)


# ------------------------------------------------------------------------------------ splash (TPU)


@pytest.mark.parametrize("spec,segments,gqa,t", [
    (MaskSpec(), False, 1, 128),
    (MaskSpec(window=40), True, 2, 128),
    (MaskSpec(causal=False), False, 1, 120),  # padded to 128: the pad keys get a segment of their own
    pytest.param(MaskSpec(chunk=32), True, 1, 200, marks=pytest.mark.slow),
    pytest.param(MaskSpec(causal=False), True, 2, 128, marks=pytest.mark.slow),
])
def test_splash_interpret_equals_reference(spec, segments, gqa, t):
  heads = 2
  q, k, v, do = _qkv(1, t, t, heads, heads // gqa, 64, jnp.float32)
  kw = {}
  if segments:
    seg = _packed_segments(1, t, [50, 60])  # two documents, then padding (segment 0)
    kw = dict(q_segment_ids=seg, kv_segment_ids=seg)
  fn = functools.partial(auto.splash_attention, interpret=True)
  _check_vs_reference(lambda q, k, v, spec, **m: fn(q, k, v, spec, m.get("q_segment_ids"), m.get("kv_segment_ids")),
                      q, k, v, do, spec, jnp.float32, **kw)


def test_auto_routes_to_splash_on_tpu_and_records_the_site(monkeypatch):
  monkeypatch.setattr(ops, "kernel_platform", lambda: "tpu")
  monkeypatch.setattr(auto, "splash_attention", functools.partial(auto.splash_attention, interpret=True))
  monkeypatch.setattr(auto, "_CHOICES", {})
  t = 128
  q, k, v, _ = _qkv(1, t, t, 2, 2, 64, jnp.float32)
  seg = _packed_segments(1, t, [70, 40])
  spec = MaskSpec(window=16)
  out = attention(q, k, v, spec, impl="auto", q_segment_ids=seg, kv_segment_ids=seg, site="enc/attn")
  want = ops.reference_attention(q, k, v, spec, q_segment_ids=seg, kv_segment_ids=seg)
  np.testing.assert_allclose(out, want, atol=2e-5, rtol=2e-5)
  assert auto.choices() == {"enc/attn": auto.Choice("splash", "splash, causal window 16, segment ids")}


def test_a_stack_records_each_call_site(monkeypatch):
  monkeypatch.setattr(auto, "_CHOICES", {})
  cfg = StackConfig(num_layers=2, d_model=16, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32)
  stack = Stack(cfg, MaskSpec(window=4), "auto", mask_by_index=True, name="encoder")
  x = jnp.zeros((1, 8, 16))
  pos = jnp.arange(8)[None]
  seg = jnp.ones((1, 8), jnp.int32)
  jax.eval_shape(lambda: stack.init(jax.random.PRNGKey(0), x, positions=pos, segment_ids=seg))
  sites = auto.choices()
  assert sites and all(c.impl == "xla" for c in sites.values())
  assert set(sites) == {"layer_0/attn", "layer_1/attn"}  # the module path (a root module's name is not in it)
  lines = auto.format_choices(sites)
  assert lines == ["attention    xla: CPU: the blocked XLA path: layer_*/attn"]
