"""Block attention: Pallas kernels (both interpret flavours), the blocked XLA path and the splash anchor.

Everything is compared with the dense float32 oracle `reference_attention`, values and gradients (one
jitted jax.vjp per case). Shapes are tiny with small tiles so that each case still spans several tiles,
padding (lengths not a multiple of the tile) and skipped tiles. Broader sweeps are @pytest.mark.slow.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hat_jax.kernels import MaskSpec, attention, block_attention, cache_attention, dense_mask, reference_attention
from hat_jax.kernels.blocked_xla import blocked_attention
from hat_jax.kernels import tiling

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}  # relative to max |reference| (bf16: 8-bit mantissa)


def _qkv(b, tq, tk, h, hk, d, dtype, seed=0):
  kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(kq, (b, tq, h, d), jnp.float32).astype(dtype)
  k = jax.random.normal(kk, (b, tk, hk, d), jnp.float32).astype(dtype)
  v = jax.random.normal(kv, (b, tk, hk, d), jnp.float32).astype(dtype)
  do = jax.random.normal(kg, (b, tq, h, d), jnp.float32).astype(dtype)
  return q, k, v, do


def _assert_close(got, want, dtype, what):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  assert np.all(np.isfinite(got)), f"{what}: non-finite values"
  err = np.max(np.abs(got - want)) / max(1.0, np.max(np.abs(want)))
  assert err <= TOL[dtype], f"{what}: max relative error {err:.2e} > {TOL[dtype]:.0e}"


def _check_vs_reference(fn, q, k, v, do, spec, dtype, **mask_kw):
  """Compares fn(q, k, v) and its vjp with the float32 oracle under the same mask arguments."""
  f32 = lambda x: x.astype(jnp.float32)  # noqa: E731

  @jax.jit
  def run(q, k, v, do):
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, spec, **mask_kw), q, k, v)
    return out, vjp(do)

  @jax.jit
  def run_ref(q, k, v, do):
    out, vjp = jax.vjp(lambda q, k, v: reference_attention(q, k, v, spec, **mask_kw), q, k, v)
    return out, vjp(do)

  out, grads = run(q, k, v, do)
  ref_out, ref_grads = run_ref(f32(q), f32(k), f32(v), f32(do))
  assert out.dtype == q.dtype
  _assert_close(out, ref_out, dtype, "output")
  for name, g, rg in zip("qkv", grads, ref_grads):
    _assert_close(g, rg, dtype, f"d{name}")


def _packed_segments(b, t, lengths):
  """[b, t] segment ids 1, 2, ... for consecutive documents of `lengths`, then 0 (padding)."""
  ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])
  ids = np.pad(ids, (0, t - len(ids)))
  return jnp.asarray(np.broadcast_to(ids, (b, t)), jnp.int32)


# (name, spec, b, tq, tk, h, hk, dtype, extra mask arguments builder)
def _case(name):
  b = 1
  if name == "causal_gqa2":
    return MaskSpec(), (b, 21, 21, 2, 1, jnp.float32), {}
  if name == "window_segments":
    seg = _packed_segments(b, 21, [7, 9])  # two documents then padding rows (segment 0)
    return MaskSpec(window=5), (b, 21, 21, 2, 2, jnp.float32), dict(q_segment_ids=seg, kv_segment_ids=seg)
  if name == "chunk_bf16_gqa4":
    return MaskSpec(chunk=4), (b, 19, 19, 4, 1, jnp.bfloat16), {}
  if name == "block_causal_scale_ids":  # VAR: positions are scale ids, causal becomes block-causal
    ids = jnp.asarray(np.repeat(np.arange(4), [1, 4, 9, 6])[None], jnp.int32)
    return MaskSpec(), (b, 20, 20, 2, 1, jnp.float32), dict(q_positions=ids, kv_positions=ids)
  if name == "kv_cache_decode":  # 3 new queries at positions 14..16 against a 24-slot cache
    qpos = jnp.arange(14, 17, dtype=jnp.int32)[None]
    kpos = jnp.arange(24, dtype=jnp.int32)[None]
    kseg = (kpos < 17).astype(jnp.int32)  # empty cache slots carry segment 0
    return MaskSpec(window=6), (b, 3, 24, 2, 1, jnp.float32), dict(
        q_positions=qpos, kv_positions=kpos, q_segment_ids=jnp.ones((b, 3), jnp.int32), kv_segment_ids=kseg)
  if name == "full_noncausal":
    return MaskSpec(causal=False), (b, 13, 17, 2, 1, jnp.float32), {}
  raise KeyError(name)


@pytest.mark.parametrize("name", [
    "causal_gqa2", "window_segments", "chunk_bf16_gqa4", "block_causal_scale_ids", "kv_cache_decode",
    pytest.param("full_noncausal", marks=pytest.mark.slow),
])
def test_pallas_gpu_interpret_matches_reference(name):
  spec, (b, tq, tk, h, hk, dtype), kw = _case(name)
  q, k, v, do = _qkv(b, tq, tk, h, hk, 12, dtype)  # head_dim 12: exercises the power-of-two padding
  fn = functools.partial(block_attention, backend="gpu", interpret=True, block_q=8, block_k=8)
  _check_vs_reference(fn, q, k, v, do, spec, dtype, **kw)


@pytest.mark.parametrize("name", [
    "window_segments",
    pytest.param("causal_gqa2", marks=pytest.mark.slow),
    pytest.param("chunk_bf16_gqa4", marks=pytest.mark.slow),
    pytest.param("block_causal_scale_ids", marks=pytest.mark.slow),
    pytest.param("kv_cache_decode", marks=pytest.mark.slow),
    pytest.param("full_noncausal", marks=pytest.mark.slow),
])
def test_pallas_tpu_interpret_matches_reference(name):
  spec, (b, tq, tk, h, hk, dtype), kw = _case(name)
  q, k, v, do = _qkv(b, tq, tk, h, hk, 8, dtype)
  fn = functools.partial(block_attention, backend="tpu", interpret=True, block_q=8, block_k=8)
  _check_vs_reference(fn, q, k, v, do, spec, dtype, **kw)


def test_fully_masked_rows_give_zeros_and_finite_grads():
  # Query segment 3 appears in no key: those rows must be exactly zero, gradients finite.
  b, t = 1, 12
  q, k, v, do = _qkv(b, t, t, 2, 1, 8, jnp.float32)
  qseg = jnp.asarray([[1] * 6 + [3] * 6], jnp.int32)
  kseg = jnp.asarray([[1] * 6 + [2] * 6], jnp.int32)
  for impl in ("xla", "pallas"):
    @jax.jit
    def run(q, k, v, do, impl=impl):
      f = lambda q, k, v: attention(q, k, v, MaskSpec(window=4), impl=impl,  # noqa: E731
                                    q_segment_ids=qseg, kv_segment_ids=kseg)
      out, vjp = jax.vjp(f, q, k, v)
      return out, vjp(do)
    out, grads = run(q, k, v, do)
    assert np.all(np.asarray(out[:, 6:]) == 0.0), impl
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads), impl


@pytest.mark.parametrize("spec,t,segments", [
    (MaskSpec(window=3), 5, False),  # shorter than one block
    (MaskSpec(window=3), 37, True),
    (MaskSpec(window=20), 37, True),  # window > block: 3 key blocks per query block
    (MaskSpec(chunk=3), 37, True),
    (MaskSpec(chunk=8, causal=False), 37, True),
    (MaskSpec(window=5, chunk=4), 37, False),
])
def test_blocked_xla_matches_reference(spec, t, segments):
  q, k, v, do = _qkv(2, t, t, 4, 2, 8, jnp.float32)
  seg = _packed_segments(2, t, [t // 2, t - t // 2 - 1])
  kw = dict(q_segment_ids=seg, kv_segment_ids=seg) if segments else {}
  _check_vs_reference(blocked_attention, q, k, v, do, spec, jnp.float32, **kw)


def test_xla_dispatch_uses_blocked_path_for_local_masks():
  # The blocked path's jaxpr holds no [q_len, kv_len] logits: its largest dot is per block.
  t = 256
  q, k, v, _ = _qkv(1, t, t, 1, 1, 8, jnp.float32)
  text = str(jax.make_jaxpr(lambda q, k, v: attention(q, k, v, MaskSpec(window=8)))(q, k, v))
  assert f"{t},{t}" not in text.replace(" ", "")
  np.testing.assert_allclose(attention(q, k, v, MaskSpec(window=8)),
                             reference_attention(q, k, v, MaskSpec(window=8)), atol=2e-5)


def test_static_spans_are_linear_in_length():
  spans = {t: tiling.static_spans(MaskSpec(window=64), t, t, 32, 32) for t in (256, 1024, 4096)}
  assert spans[256] == spans[1024] == spans[4096] == (3, 3)
  assert tiling.static_spans(MaskSpec(), 256, 256, 32, 32) == (8, 8)  # causal: all tiles


def test_tile_ranges_skip_other_documents():
  # Two packed documents, no window: key tiles of document 2 are skipped for document-1 queries.
  seg = _packed_segments(1, 32, [16, 16])
  pos = jnp.arange(32, dtype=jnp.int32)[None]
  valid = jnp.ones((1, 32), bool)
  live = tiling.live_tiles(jnp, MaskSpec(causal=False), pos, pos, seg, seg, valid, valid, 8, 8)
  lo, hi = tiling.tile_ranges(jnp, live)
  np.testing.assert_array_equal(lo[0], [0, 0, 2, 2])
  np.testing.assert_array_equal(hi[0], [2, 2, 4, 4])


@pytest.mark.parametrize("spec", [MaskSpec(), MaskSpec(window=7), MaskSpec(chunk=6), MaskSpec(causal=False)])
@pytest.mark.parametrize("shuffled", [False, True])
def test_full_tiles_are_exactly_the_all_live_tiles(spec, shuffled):
  # Full tiles skip the element-wise mask in the GPU kernels: any tile marked full that holds a masked
  # or padded pair would be a silent wrong result, so compare with the dense mask tile by tile.
  rng = np.random.default_rng(0)
  t, pad, bq, bk = 29, 32, 4, 8
  pos = np.arange(t) if not shuffled else np.sort(rng.integers(0, 12, t))  # VAR-like repeated ids
  seg = np.repeat([1, 2], [17, 12])
  padded = lambda x, v: np.pad(x, (0, pad - t), constant_values=v)[None]  # noqa: E731
  qp, sp = padded(pos, 0), padded(seg, tiling.Q_PAD_SEGMENT)
  kp, sk = padded(pos, 0), padded(seg, tiling.KV_PAD_SEGMENT)
  valid = (np.arange(pad) < t)[None]
  full = tiling.full_tiles(np, spec, qp, kp, sp, sk, valid, valid, bq, bk)[0]
  dense = np.asarray(dense_mask(spec, jnp.asarray(qp), jnp.asarray(kp), jnp.asarray(sp), jnp.asarray(sk)))[0]
  dense = dense & valid[0][:, None] & valid[0][None, :]
  want = dense.reshape(pad // bq, bq, pad // bk, bk).all(axis=(1, 3))
  np.testing.assert_array_equal(full, want)
  lo, hi = tiling.tile_ranges(np, tiling.live_tiles(np, spec, qp, kp, sp, sk, valid, valid, bq, bk))
  flo, fhi = tiling.full_ranges(np, full[None], hi)
  for row in range(full.shape[0]):  # [flo, fhi) is a run of full tiles inside [lo, hi)
    assert lo[0, row] <= flo[0, row] <= fhi[0, row] <= hi[0, row]
    assert full[row, flo[0, row]:fhi[0, row]].all()
    if full[row].any():
      assert flo[0, row] == np.argmax(full[row])


@pytest.mark.parametrize("name", ["causal_gqa2", "window_segments", "kv_cache_decode", "full_noncausal"])
def test_head_major_kv_layout_matches_sequence_major(name):
  """kv_layout="bhtd" (the KV caches' layout) is the same attention, values and gradients."""
  spec, (b, tq, tk, h, hk, dtype), kw = _case(name)
  q, k, v, do = _qkv(b, tq, tk, h, hk, 8, dtype)
  to_hm = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731

  def head_major(q, k, v, spec, **kw):
    return reference_attention(q, to_hm(k), to_hm(v), spec, kv_layout="bhtd", **kw)

  _check_vs_reference(head_major, q, k, v, do, spec, dtype, **kw)


@pytest.mark.parametrize("how,case", [("attend_and_append", "decode_window_gqa"),
                                      ("attend_and_append", "chunk_ragged_rollback"),
                                      ("cache_attention", "chunk_ragged_rollback")])
def test_kv_cache_attention_is_reference_over_the_appended_cache(how, case):
  """A cached attention step (`KVCache.attend_and_append`: a decode step reads the cache before the
  append with `cache_attention`, a chunk appends first) is attention over the cache after the append,
  values and gradients, the slots past the written ones excluded (stale entries a rollback left behind).
  `cache_attention` is also checked on its own with a chunk of new entries."""
  from hat_jax.models.layers import KVCache
  b, slots, h, hk, d = 2, 12, 4, 2, 8
  if case == "decode_window_gqa":  # one new entry per row, rows at different lengths, local window
    spec, t, length, new_seg = MaskSpec(window=4), 1, np.array([5, 9]), np.ones((b, 1), np.int32)
  else:  # three new entries, row 1 has only two (the third is padding, segment 0); causal
    spec, t, length, new_seg = MaskSpec(), 3, np.array([2, 6]), np.array([[1, 1, 1], [1, 1, 0]], np.int32)
  ks = jax.random.split(jax.random.key(1), 6)
  q = jax.random.normal(ks[0], (b, t, h, d))
  k, v = (jax.random.normal(kk, (b, t, hk, d)) for kk in ks[1:3])
  cache_k, cache_v = (jax.random.normal(kk, (b, hk, slots, d)) for kk in ks[3:5])
  # Every slot holds an entry of segment 1: from `length` on they are stale (position 0, so they would pass
  # a causal mask) and must not be attended.
  slot = np.arange(slots)[None]
  cache = KVCache(cache_k, cache_v, jnp.asarray(np.where(slot < length[:, None], slot, 0), jnp.int32),
                  jnp.ones((b, slots), jnp.int32), jnp.asarray(length, jnp.int32))
  pos = jnp.asarray(length[:, None] + np.arange(t)[None], jnp.int32)
  seg = jnp.asarray(new_seg)

  def step(q, k, v, ck, cv):
    if how == "cache_attention":
      return cache_attention(q, ck, cv, k, v, spec, q_positions=pos, q_segment_ids=seg, cache_positions=cache.positions,
                             cache_segment_ids=cache.segment_ids, cache_length=cache.length, kv_positions=pos,
                             kv_segment_ids=seg)
    return cache._replace(k=ck, v=cv).attend_and_append(q, k, v, spec, pos, seg, pos, seg)[0]

  def appended(q, k, v, ck, cv):
    full = cache._replace(k=ck, v=cv).append(k, v, pos, seg)
    live = jnp.where(jnp.arange(slots)[None] < jnp.asarray(length)[:, None] + t, full.segment_ids, 0)
    return reference_attention(q, full.k, full.v, spec, kv_layout="bhtd", q_positions=pos,
                               kv_positions=full.positions, q_segment_ids=seg, kv_segment_ids=live)

  args = (q, k, v, cache_k, cache_v)
  valid = (seg != 0)[:, :, None, None]  # a padding query's output is not defined (and not used)
  do = jax.random.normal(ks[5], q.shape) * valid
  out, vjp = jax.vjp(step, *args)
  want, want_vjp = jax.vjp(appended, *args)
  _assert_close(out * valid, want * valid, jnp.float32, "output")
  for name, g, wg in zip(["dq", "dk", "dv", "dcache_k", "dcache_v"], vjp(do), want_vjp(do)):
    _assert_close(g, wg, jnp.float32, name)
  assert float(jnp.max(jnp.abs(out))) > 0.1  # not a vacuous all-masked case


def test_errors_are_explicit():
  q, k, v, _ = _qkv(1, 8, 8, 2, 1, 8, jnp.float32)
  seg = jnp.ones((1, 8), jnp.int32)
  with pytest.raises(ValueError, match="both q_segment_ids and kv_segment_ids"):
    block_attention(q, k, v, q_segment_ids=seg)
  with pytest.raises(ValueError, match="backend must be one of"):
    block_attention(q, k, v, backend="cuda")
  with pytest.raises(ValueError, match="multiples of 8"):
    block_attention(q, k, v, block_q=6)
  with pytest.raises(ValueError, match="attention_impl must be one of"):
    attention(q, k, v, impl="flash")
  with pytest.raises(ValueError, match="kv_layout must be one of"):
    reference_attention(q, k, v, kv_layout="bthd_")
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):  # [b, t=8, h=1, d] read as bhtd: 8 heads
    reference_attention(q, k, v, kv_layout="bhtd")


# ---------------------------------------------------------------------------------- splash anchor


def _splash(mask, q, k, v):
  """Splash attention (TPU kernel, interpret mode) on our [b, T, h, d] layout, MHA, scale 1/sqrt(d)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  b, t, h, d = q.shape
  sizes = sk.BlockSizes(block_q=128, block_kv=128, block_kv_compute=128, block_q_dkv=128,
                        block_kv_dkv=128, block_kv_dkv_compute=128, block_q_dq=128, block_kv_dq=128)
  kernel = sk.make_splash_mha_single_device(sm.MultiHeadMask([mask] * h), block_sizes=sizes,
                                            interpret=True)
  to_hd = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
  out = jax.vmap(kernel)(to_hd(q) * d**-0.5, to_hd(k), to_hd(v))
  return to_hd(out)


@pytest.mark.parametrize("which", ["window", "chunk"])
def test_matches_splash_attention_interpret(which):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  t, w = 256, 40
  q, k, v, _ = _qkv(1, t, t, 2, 2, 64, jnp.float32)
  if which == "window":
    spec, mask = MaskSpec(window=w), sm.LocalMask((t, t), window_size=(w - 1, 0), offset=0)
  else:
    spec, mask = MaskSpec(chunk=w), sm.ChunkedCausalMask((t, t), chunk_size=w)
  want = jax.jit(_splash, static_argnums=0)(mask, q, k, v)
  ours = jax.jit(lambda q, k, v: block_attention(q, k, v, spec, block_q=64, block_k=64))(q, k, v)
  np.testing.assert_allclose(ours, want, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(attention(q, k, v, spec), want, atol=2e-5, rtol=2e-5)


@pytest.mark.skipif(jax.default_backend() != "tpu", reason="needs a TPU (compiled Mosaic kernel)")
def test_compiled_tpu_kernel_matches_reference():
  q, k, v, do = _qkv(2, 300, 300, 8, 2, 128, jnp.bfloat16)
  fn = functools.partial(block_attention, backend="tpu", interpret=False)
  _check_vs_reference(fn, q, k, v, do, MaskSpec(window=128), jnp.bfloat16)
