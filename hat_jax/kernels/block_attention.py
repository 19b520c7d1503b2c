"""Block-sparse flash attention in Pallas: one tile algebra, two schedules (TPU Mosaic, GPU).

Layout inside the kernels (the wrapper transposes/pads): q/do/o [batch, heads, q_pad, head_dim],
k/v [batch, kv_heads, kv_pad, head_dim], q positions/segments [batch, q_pad, 1] (a column per tile),
kv positions/segments [batch, 1, kv_pad] (a row per tile), logsumexp/delta [batch, heads, q_pad, 1].

Tile skipping: `tiling.tile_ranges` gives, per query tile, the range [lo, hi) of key tiles that may hold
a live entry (and per key tile the range of query tiles, for dk/dv). The TPU schedule walks that range
as the innermost ("arbitrary") grid axis whose extent is a static bound on hi - lo; the key index_map
reads lo from scalar-prefetched SMEM, so skipped tiles are neither DMA'd nor computed. The GPU schedule
has one program per query tile and a `fori_loop(lo, hi)` over key tiles (no cross-program state on GPU).

Softmax: flash-style online softmax in float32 with a finite mask value, so fully masked rows give
l = 0 and we return zeros (not NaN), matching `reference_attention`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from hat_jax.kernels import tiling
from hat_jax.kernels.masks import MaskSpec, default_positions, element_mask
from hat_jax.kernels.reference import check_qkv
from hat_jax.kernels.sharded import kernel_platform

_NEG = -1e30  # finite "minus infinity": exp(_NEG - m) underflows to 0 and never yields inf - inf = NaN
BACKENDS = ("tpu", "gpu")


@dataclasses.dataclass(frozen=True)
class _Cfg:
  """Static kernel configuration (hashable: it is a nondiff argument of the custom VJP)."""

  spec: MaskSpec
  scale: float
  block_q: int
  block_k: int
  span_q: int  # static bound on key tiles visited per query tile
  span_k: int  # static bound on query tiles visited per key tile
  backend: str  # "tpu" (Mosaic schedule) or "gpu" (one program per tile, in-kernel loop)
  num_warps: int  # GPU only: Triton warps per program
  num_stages: int  # GPU only: Triton software-pipelining depth of the in-kernel key loop
  interpret: bool  # CPU interpret mode: generic interpreter for "gpu", the TPU simulator for "tpu"

  def interpret_arg(self):
    if not self.interpret:
      return False
    return pltpu.InterpretParams() if self.backend == "tpu" else True


# ----------------------------------------------------------------------------------------- tile algebra


def dot_f32(a, b, contract_a=1, contract_b=0):
  # Only (1, 0) and the "trans_b" form (1, 1) are used: both Mosaic and Triton lower them directly;
  # transposed-lhs products transpose explicitly (p.T) like the upstream flash kernels.
  return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                         preferred_element_type=jnp.float32)


def _scores(cfg, q, k, qp, qs, kp, ks, masked=True):
  """q [bq, d], k [bk, d], qp/qs [bq, 1], kp/ks [1, bk] -> f32 logits [bq, bk] and mask [bq, bk].

  masked=False: the caller knows the whole tile is live (tiling.full_tiles); mask is then None and the
  position/segment refs are not read.
  """
  s = dot_f32(q, k, 1, 1) * cfg.scale
  return s, (element_mask(cfg.spec, qp(), kp(), qs(), ks()) if masked else None)


def _where(mask, x, fill):
  return x if mask is None else jnp.where(mask, x, fill)


def _fwd_update(cfg, carry, q, k, v, qp, qs, kp, ks, masked=True):
  """One online-softmax step. carry = (m [bq,1], l [bq,1], acc [bq,d]), all float32.

  qp/qs/kp/ks are thunks reading the position/segment tiles, so unmasked tiles never load them.
  """
  m, l, acc = carry
  s, mask = _scores(cfg, q, k, qp, qs, kp, ks, masked)
  s = _where(mask, s, _NEG)
  m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
  # where(), not just exp(): in a row with no live key yet m_new == _NEG and exp(0) would be 1.
  p = _where(mask, jnp.exp(s - m_new), 0.0)
  alpha = jnp.exp(m - m_new)
  l = alpha * l + jnp.sum(p, axis=-1, keepdims=True)
  acc = alpha * acc + dot_f32(p.astype(v.dtype), v)
  return m_new, l, acc


def _fwd_finish(m, l, acc):
  """-> (out [bq, d] f32, logsumexp [bq, 1]); rows with no live key give out = 0, lse = 0."""
  empty = l == 0.0
  out = acc / jnp.where(empty, 1.0, l)
  lse = jnp.where(empty, 0.0, m + jnp.log(jnp.where(empty, 1.0, l)))
  return out, lse


def _bwd_tile(cfg, q, k, v, do, lse, delta, qp, qs, kp, ks, masked=True):
  """-> probabilities p and dlogits ds (scale not applied), both f32 [bq, bk]."""
  s, mask = _scores(cfg, q, k, qp, qs, kp, ks, masked)
  p = _where(mask, jnp.exp(s - lse), 0.0)
  dp = dot_f32(do, v, 1, 1)
  return p, p * (dp - delta)


def _readers(*refs, at=()):
  """Thunks reading ref[at] (whole ref by default), for the lazily read mask inputs of _scores."""
  return [functools.partial(lambda r: r[at] if at else r[...], r) for r in refs]


def _init_carry(bq, d):
  return (jnp.full((bq, 1), _NEG, jnp.float32), jnp.zeros((bq, 1), jnp.float32),
          jnp.zeros((bq, d), jnp.float32))


# ------------------------------------------------------------------------------------ TPU schedule


def _clamped(j, lo, hi):
  # Past the live range keep pointing at the last live tile: same block index => Pallas skips the DMA.
  return jnp.minimum(lo + j, jnp.maximum(hi - 1, 0))


def _fwd_kernel_tpu(lo_ref, hi_ref, q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref,
                    o_ref, lse_ref, m_sc, l_sc, acc_sc, *, cfg, nq):
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  lo, hi = lo_ref[b * nq + i], hi_ref[b * nq + i]

  @pl.when(j == 0)
  def _():
    m_sc[...], l_sc[...], acc_sc[...] = _init_carry(*acc_sc.shape)

  @pl.when(lo + j < hi)
  def _():
    m_sc[...], l_sc[...], acc_sc[...] = _fwd_update(
        cfg, (m_sc[...], l_sc[...], acc_sc[...]), q_ref[...], k_ref[...], v_ref[...],
        *_readers(qp_ref, qs_ref, kp_ref, ks_ref))

  @pl.when(j == pl.num_programs(3) - 1)
  def _():
    out, lse = _fwd_finish(m_sc[...], l_sc[...], acc_sc[...])
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = lse


def _dq_kernel_tpu(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qp_ref, qs_ref,
                   kp_ref, ks_ref, dq_ref, dq_sc, *, cfg, nq):
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  lo, hi = lo_ref[b * nq + i], hi_ref[b * nq + i]

  @pl.when(j == 0)
  def _():
    dq_sc[...] = jnp.zeros_like(dq_sc)

  @pl.when(lo + j < hi)
  def _():
    k = k_ref[...]
    _, ds = _bwd_tile(cfg, q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], dl_ref[...],
                      *_readers(qp_ref, qs_ref, kp_ref, ks_ref))
    dq_sc[...] += dot_f32(ds.astype(k.dtype), k) * cfg.scale

  @pl.when(j == pl.num_programs(3) - 1)
  def _():
    dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)


def _dkv_kernel_tpu(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qp_ref, qs_ref,
                    kp_ref, ks_ref, dk_ref, dv_ref, dk_sc, dv_sc, *, cfg, nk):
  # Grid (batch, kv_head, key tile, group member, query tile): dk/dv of a kv head sum over its group.
  b, kj, g, j = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
  lo, hi = lo_ref[b * nk + kj], hi_ref[b * nk + kj]

  @pl.when((g == 0) & (j == 0))
  def _():
    dk_sc[...] = jnp.zeros_like(dk_sc)
    dv_sc[...] = jnp.zeros_like(dv_sc)

  @pl.when(lo + j < hi)
  def _():
    q, do = q_ref[...], do_ref[...]
    p, ds = _bwd_tile(cfg, q, k_ref[...], v_ref[...], do, lse_ref[...], dl_ref[...],
                      *_readers(qp_ref, qs_ref, kp_ref, ks_ref))
    dv_sc[...] += dot_f32(p.astype(do.dtype).T, do)
    dk_sc[...] += dot_f32(ds.astype(q.dtype).T, q) * cfg.scale

  @pl.when((g == pl.num_programs(3) - 1) & (j == pl.num_programs(4) - 1))
  def _():
    dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _tpu_call(kernel, cfg, grid, tables, in_specs, out_specs, out_shape, scratch, semantics):
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=len(tables), grid=grid, in_specs=in_specs, out_specs=out_specs,
          scratch_shapes=[pltpu.VMEM(shape, jnp.float32) for shape in scratch]),
      out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
      interpret=cfg.interpret_arg(),
  )


def _q_major_specs_tpu(cfg, groups, d, with_bwd):
  """BlockSpecs for the query-tile-major grid (b, h, i, j) with prefetched (lo, hi)."""
  bq, bk = cfg.block_q, cfg.block_k

  def kv_index(nq):
    def index(b, h, i, j, lo_ref, hi_ref):
      return (b, h // groups, _clamped(j, lo_ref[b * nq + i], hi_ref[b * nq + i]), 0)
    return index

  def kv_row_index(nq):
    def index(b, h, i, j, lo_ref, hi_ref):
      return (b, 0, _clamped(j, lo_ref[b * nq + i], hi_ref[b * nq + i]))
    return index

  q_tile = pl.BlockSpec((None, None, bq, d), lambda b, h, i, j, *_: (b, h, i, 0))
  col = pl.BlockSpec((None, None, bq, 1), lambda b, h, i, j, *_: (b, h, i, 0))
  q_row = pl.BlockSpec((None, bq, 1), lambda b, h, i, j, *_: (b, i, 0))

  def specs(nq):
    kv_tile = pl.BlockSpec((None, None, bk, d), kv_index(nq))
    kv_row = pl.BlockSpec((None, 1, bk), kv_row_index(nq))
    tiles = [q_tile, kv_tile, kv_tile] + ([q_tile, col, col] if with_bwd else [])
    return tiles + [q_row, q_row, kv_row, kv_row], q_tile, col
  return specs


# ------------------------------------------------------------------------------------ GPU schedule


def _three_loops(bounds, body, carry):
  """fori over [lo, flo) masked, [flo, fhi) unmasked (whole tiles live), [fhi, hi) masked."""
  lo, flo, fhi, hi = bounds
  carry = lax.fori_loop(lo, flo, functools.partial(body, masked=True), carry)
  carry = lax.fori_loop(flo, fhi, functools.partial(body, masked=False), carry)
  return lax.fori_loop(fhi, hi, functools.partial(body, masked=True), carry)


def _bounds(tables, row):
  lo_ref, hi_ref, flo_ref, fhi_ref = tables
  return lo_ref[row], flo_ref[row], fhi_ref[row], hi_ref[row]


def _fwd_kernel_gpu(lo_ref, hi_ref, flo_ref, fhi_ref, q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref,
                    o_ref, lse_ref, *, cfg, nq):
  i, b = pl.program_id(0), pl.program_id(1)
  bk = cfg.block_k
  q = q_ref[...]

  def body(t, carry, masked):
    sl = pl.ds(pl.multiple_of(t * bk, bk), bk)
    return _fwd_update(cfg, carry, q, k_ref[sl, :], v_ref[sl, :],
                       *_readers(qp_ref, qs_ref), *_readers(kp_ref, ks_ref, at=(slice(None), sl)),
                       masked=masked)

  carry = _three_loops(_bounds((lo_ref, hi_ref, flo_ref, fhi_ref), b * nq + i), body,
                       _init_carry(*q.shape))
  out, lse = _fwd_finish(*carry)
  o_ref[...] = out.astype(o_ref.dtype)
  lse_ref[...] = lse


def _dq_kernel_gpu(lo_ref, hi_ref, flo_ref, fhi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qp_ref,
                   qs_ref, kp_ref, ks_ref, dq_ref, *, cfg, nq):
  i, b = pl.program_id(0), pl.program_id(1)
  bk = cfg.block_k
  q, do, lse, dl = (r[...] for r in (q_ref, do_ref, lse_ref, dl_ref))

  def body(t, dq, masked):
    sl = pl.ds(pl.multiple_of(t * bk, bk), bk)
    k = k_ref[sl, :]
    _, ds = _bwd_tile(cfg, q, k, v_ref[sl, :], do, lse, dl, *_readers(qp_ref, qs_ref),
                      *_readers(kp_ref, ks_ref, at=(slice(None), sl)), masked=masked)
    return dq + dot_f32(ds.astype(k.dtype), k) * cfg.scale

  dq = _three_loops(_bounds((lo_ref, hi_ref, flo_ref, fhi_ref), b * nq + i), body,
                    jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel_gpu(lo_ref, hi_ref, flo_ref, fhi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qp_ref,
                    qs_ref, kp_ref, ks_ref, dk_ref, dv_ref, *, cfg, nk, groups):
  # q/do/lse/delta refs hold the whole group of query heads of this kv head: [groups, q_pad, ...].
  kj, b = pl.program_id(0), pl.program_id(1)
  bq = cfg.block_q
  k, v = k_ref[...], v_ref[...]
  bounds = _bounds((lo_ref, hi_ref, flo_ref, fhi_ref), b * nk + kj)
  carry = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  for g in range(groups):  # static: groups is small (GQA ratio)
    def body(t, carry, masked, g=g):
      dk, dv = carry
      sl = pl.ds(pl.multiple_of(t * bq, bq), bq)
      q, do = q_ref[g, sl, :], do_ref[g, sl, :]
      p, ds = _bwd_tile(cfg, q, k, v, do, lse_ref[g, sl, :], dl_ref[g, sl, :],
                        *_readers(qp_ref, qs_ref, at=(sl, slice(None))), *_readers(kp_ref, ks_ref),
                        masked=masked)
      return (dk + dot_f32(ds.astype(q.dtype).T, q) * cfg.scale,
              dv + dot_f32(p.astype(do.dtype).T, do))
    carry = _three_loops(bounds, body, carry)
  dk_ref[...] = carry[0].astype(dk_ref.dtype)
  dv_ref[...] = carry[1].astype(dv_ref.dtype)


def _gpu_call(kernel, cfg, grid, tables, in_specs, out_specs, out_shape):
  # Grid dim 0 is Triton's fastest-launched axis: the GPU grids put the tile index there, so programs
  # running side by side share one head's K/V (or Q) stream through L2 instead of each pulling its own.
  # Tables are tiny; each program reads its own (lo, hi) entry from the whole array.
  table_specs = [pl.BlockSpec(t.shape, lambda *_: (0,)) for t in tables]
  return pl.pallas_call(
      kernel, grid=grid, in_specs=table_specs + in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=gpu_compiler_params(cfg.num_warps, cfg.num_stages), interpret=cfg.interpret_arg())


def gpu_compiler_params(num_warps: int = 4, num_stages: int = 2):
  # Since jax 0.9 a bare pallas_call on GPU lowers through Mosaic GPU; these kernels are written for the
  # Triton lowering (one program per tile, in-kernel loops), which the Triton CompilerParams select.
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


# ------------------------------------------------------------------------------------ forward / VJP


def _forward(cfg, q, k, v, ints):
  qp, qs, kp, ks, q_tab, _ = ints
  b, h, tq, d = q.shape
  hk, tk = k.shape[1], k.shape[2]
  groups, bq = h // hk, cfg.block_q
  nq = tq // bq
  out_shape = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, tq, 1), jnp.float32))
  if cfg.backend == "tpu":
    in_specs, q_tile, col = _q_major_specs_tpu(cfg, groups, d, with_bwd=False)(nq)
    call = _tpu_call(functools.partial(_fwd_kernel_tpu, cfg=cfg, nq=nq), cfg, (b, h, nq, cfg.span_q),
                     q_tab, in_specs, [q_tile, col], out_shape, [(bq, 1), (bq, 1), (bq, d)],
                     ("parallel", "parallel", "parallel", "arbitrary"))
  else:
    in_specs, out_specs = _gpu_q_major_specs(cfg, groups, d, tk, with_bwd=False)
    call = _gpu_call(functools.partial(_fwd_kernel_gpu, cfg=cfg, nq=nq), cfg, (nq, b, h),
                     q_tab, in_specs, out_specs, out_shape)
  return call(*q_tab, q, k, v, qp, qs, kp, ks)


def _gpu_q_major_specs(cfg, groups, d, tk, with_bwd):
  bq = cfg.block_q
  q_tile = pl.BlockSpec((None, None, bq, d), lambda i, b, h: (b, h, i, 0))
  col = pl.BlockSpec((None, None, bq, 1), lambda i, b, h: (b, h, i, 0))
  kv_all = pl.BlockSpec((None, None, tk, d), lambda i, b, h: (b, h // groups, 0, 0))
  q_row = pl.BlockSpec((None, bq, 1), lambda i, b, h: (b, i, 0))
  kv_row = pl.BlockSpec((None, 1, tk), lambda i, b, h: (b, 0, 0))
  tiles = [q_tile, kv_all, kv_all] + ([q_tile, col, col] if with_bwd else [])
  return tiles + [q_row, q_row, kv_row, kv_row], [q_tile, col]


def _backward(cfg, q, k, v, ints, o, lse, do):
  qp, qs, kp, ks, q_tab, k_tab = ints
  b, h, tq, d = q.shape
  hk, tk = k.shape[1], k.shape[2]
  groups, bq, bk = h // hk, cfg.block_q, cfg.block_k
  nq, nk = tq // bq, tk // bk
  delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
  dq_shape = jax.ShapeDtypeStruct(q.shape, q.dtype)
  dkv_shape = (jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype))
  args = (q, k, v, do, lse, delta, qp, qs, kp, ks)
  if cfg.backend == "tpu":
    in_specs, q_tile, _ = _q_major_specs_tpu(cfg, groups, d, with_bwd=True)(nq)
    dq = _tpu_call(functools.partial(_dq_kernel_tpu, cfg=cfg, nq=nq), cfg, (b, h, nq, cfg.span_q),
                   q_tab, in_specs, q_tile, dq_shape, [(bq, d)],
                   ("parallel", "parallel", "parallel", "arbitrary"))(*q_tab, *args)

    def q_index(b_, hk_, kj, g, j, lo_ref, hi_ref):
      return (b_, hk_ * groups + g, _clamped(j, lo_ref[b_ * nk + kj], hi_ref[b_ * nk + kj]), 0)

    def q_row_index(b_, hk_, kj, g, j, lo_ref, hi_ref):
      return (b_, _clamped(j, lo_ref[b_ * nk + kj], hi_ref[b_ * nk + kj]), 0)

    q_tile = pl.BlockSpec((None, None, bq, d), q_index)
    col = pl.BlockSpec((None, None, bq, 1), q_index)
    q_row = pl.BlockSpec((None, bq, 1), q_row_index)
    kv_tile = pl.BlockSpec((None, None, bk, d), lambda b_, hk_, kj, g, j, *_: (b_, hk_, kj, 0))
    kv_row = pl.BlockSpec((None, 1, bk), lambda b_, hk_, kj, g, j, *_: (b_, 0, kj))
    dk, dv = _tpu_call(
        functools.partial(_dkv_kernel_tpu, cfg=cfg, nk=nk), cfg, (b, hk, nk, groups, cfg.span_k),
        k_tab, [q_tile, kv_tile, kv_tile, q_tile, col, col, q_row, q_row, kv_row, kv_row],
        [kv_tile, kv_tile], dkv_shape, [(bk, d), (bk, d)],
        ("parallel", "parallel", "parallel", "arbitrary", "arbitrary"))(*k_tab, *args)
    return dq, dk, dv

  in_specs, out_specs = _gpu_q_major_specs(cfg, groups, d, tk, with_bwd=True)
  dq = _gpu_call(functools.partial(_dq_kernel_gpu, cfg=cfg, nq=nq), cfg, (nq, b, h), q_tab,
                 in_specs, out_specs[0], dq_shape)(*q_tab, *args)
  q_grp = pl.BlockSpec((None, groups, tq, d), lambda kj, b_, hk_: (b_, hk_, 0, 0))
  col_grp = pl.BlockSpec((None, groups, tq, 1), lambda kj, b_, hk_: (b_, hk_, 0, 0))
  q_row = pl.BlockSpec((None, tq, 1), lambda kj, b_, hk_: (b_, 0, 0))
  kv_tile = pl.BlockSpec((None, None, bk, d), lambda kj, b_, hk_: (b_, hk_, kj, 0))
  kv_row = pl.BlockSpec((None, 1, bk), lambda kj, b_, hk_: (b_, 0, kj))
  dk, dv = _gpu_call(
      functools.partial(_dkv_kernel_gpu, cfg=cfg, nk=nk, groups=groups), cfg, (nk, b, hk), k_tab,
      [q_grp, kv_tile, kv_tile, q_grp, col_grp, col_grp, q_row, q_row, kv_row, kv_row],
      [kv_tile, kv_tile], dkv_shape)(*k_tab, *args)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg, q, k, v, ints):
  return _forward(cfg, q, k, v, ints)[0]


def _flash_fwd(cfg, q, k, v, ints):
  o, lse = _forward(cfg, q, k, v, ints)
  return o, (q, k, v, ints, o, lse)


def _flash_bwd(cfg, res, do):
  q, k, v, ints, o, lse = res
  dq, dk, dv = _backward(cfg, q, k, v, ints, o, lse, do)
  return dq, dk, dv, None  # integer inputs (positions, segments, tile tables) have no cotangent


_flash.defvjp(_flash_fwd, _flash_bwd)


# ------------------------------------------------------------------------------------ public wrapper


def default_block_sizes(q_len: int, kv_len: int, backend: str) -> tuple[int, int]:
  """Tiles shrunk for short sequences. TPU: 128x128 (MXU), a multiple of 8 (sublanes). GPU: 64x64, a
  power of two >= 16 (Triton tiles and tensor-core dots): fastest forward and backward on an H100 in
  tools/bench_attention.py (docs/kernels.md), and within shared memory for float32 at head_dim 128.
  """
  if backend == "tpu":
    return min(128, tiling.round_up(q_len, 8)), min(128, tiling.round_up(kv_len, 8))
  return min(64, max(16, pl.next_power_of_2(q_len))), min(64, max(16, pl.next_power_of_2(kv_len)))


def block_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec = MaskSpec(),
    *,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    scale: float | None = None,
    backend: str | None = None,
    interpret: bool | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> jax.Array:
  """Masked GQA flash attention that skips fully masked tiles; same contract as `reference_attention`.

  backend: "tpu" (Mosaic schedule) or "gpu"; default = the platform compiled for (`kernel_platform`:
    the mesh in context, else the default backend), and "gpu" on CPU.
  interpret: run in CPU interpret mode (generic interpreter for "gpu", TPU simulator for "tpu");
    default True exactly when that platform is the CPU.
  On a multi-device mesh call it through `hat_jax.kernels.attention(impl="pallas")`, which runs it per
  device under `jax.shard_map` (XLA cannot partition a Pallas call).
  Positions may be arbitrary int arrays: tile skipping then uses per-tile min/max at run time and the
  grid spans every key tile (correct, less skipping). With default positions (arange, or the block ids
  of `spec.blocks`) the grid extent is a static bound from the mask, so cost is linear in length for a
  window or chunk mask, and follows the live scale pairs of a block layout (HMAR's Markovian mask).
  num_warps, num_stages: GPU (Triton) launch parameters; tools/bench_attention.py sweeps them.
  """
  check_qkv(q, k, v)
  platform = kernel_platform()
  if backend is None:
    backend = "tpu" if platform == "tpu" else "gpu"
  if backend not in BACKENDS:
    raise ValueError(f"block_attention backend must be one of {BACKENDS}, got {backend!r}.")
  if interpret is None:
    interpret = platform == "cpu"
  if (q_segment_ids is None) != (kv_segment_ids is None):
    raise ValueError("Pass both q_segment_ids and kv_segment_ids, or neither.")
  b, tq, h, d = q.shape
  tk = k.shape[1]
  dbq, dbk = default_block_sizes(tq, tk, backend)
  bq, bk = block_q or dbq, block_k or dbk
  if bq % 8 or bk % 8:
    raise ValueError(f"block_q and block_k must be multiples of 8, got {bq}, {bk}.")
  if backend == "tpu" and not interpret and bk % 128 and bk < tk:
    raise ValueError(
        f"On TPU block_k ({bk}) must be a multiple of 128 (the lane width) or cover the whole key length.")
  tq_pad, tk_pad = tiling.round_up(tq, bq), tiling.round_up(tk, bk)
  default_pos = q_positions is None and kv_positions is None
  # Omitted positions: arange, or the block ids of spec.blocks (a static scale layout).
  qp = tiling.pad_axis(
      default_positions(b, tq, spec) if q_positions is None else q_positions.astype(jnp.int32), tq_pad, 1)
  kp = tiling.pad_axis(
      default_positions(b, tk, spec) if kv_positions is None else kv_positions.astype(jnp.int32), tk_pad, 1)
  zeros = lambda n: jnp.zeros((b, n), jnp.int32)  # noqa: E731
  qs = tiling.pad_axis(zeros(tq) if q_segment_ids is None else q_segment_ids.astype(jnp.int32),
                       tq_pad, 1, tiling.Q_PAD_SEGMENT)
  ks = tiling.pad_axis(zeros(tk) if kv_segment_ids is None else kv_segment_ids.astype(jnp.int32),
                       tk_pad, 1, tiling.KV_PAD_SEGMENT)
  q_valid = jnp.arange(tq_pad)[None] < tq
  k_valid = jnp.arange(tk_pad)[None] < tk
  tile_args = (jnp, spec, qp, kp, None if q_segment_ids is None else qs, None if q_segment_ids is None else ks,
               jnp.broadcast_to(q_valid, qp.shape), jnp.broadcast_to(k_valid, kp.shape), bq, bk)
  live = tiling.live_tiles(*tile_args)
  q_lo, q_hi = tiling.tile_ranges(jnp, live)
  k_lo, k_hi = tiling.tile_ranges(jnp, jnp.swapaxes(live, 1, 2))
  # Per-row tile tables, flat (kernels index row b * n + i): (lo, hi) for both schedules, plus the run of
  # full tiles (flo, fhi) that only the GPU schedule uses.
  flat = lambda *xs: tuple(x.reshape(-1) for x in xs)  # noqa: E731
  q_tab, k_tab = flat(q_lo, q_hi), flat(k_lo, k_hi)
  if backend == "gpu":
    full = tiling.full_tiles(*tile_args)
    q_tab += flat(*tiling.full_ranges(jnp, full, q_hi))
    k_tab += flat(*tiling.full_ranges(jnp, jnp.swapaxes(full, 1, 2), k_hi))
  if default_pos:
    span_q, span_k = tiling.static_spans(spec, tq, tk, bq, bk)
  else:
    span_q, span_k = tk_pad // bk, tq_pad // bq
  cfg = _Cfg(spec=spec, scale=float(d**-0.5 if scale is None else scale), block_q=bq, block_k=bk,
             span_q=span_q, span_k=span_k, backend=backend, num_warps=num_warps, num_stages=num_stages,
             interpret=bool(interpret))
  # Triton needs power-of-two tile dims: zero-pad head_dim (zeros change neither q.k nor the output).
  d_pad = pl.next_power_of_2(d) if backend == "gpu" else d

  def to_kernel(x, n):
    # [b, T, h, d] -> [b, h, T_pad, d_pad]: tiles of one head are then contiguous (Mosaic needs the last
    # two block dims to be (sublane, lane)-aligned, which a strided head slice is not).
    return tiling.pad_axis(tiling.pad_axis(x, n, 1), d_pad, 3).transpose(0, 2, 1, 3)

  ints = (qp[:, :, None], qs[:, :, None], kp[:, None, :], ks[:, None, :], q_tab, k_tab)
  out = _flash(cfg, to_kernel(q, tq_pad), to_kernel(k, tk_pad), to_kernel(v, tk_pad), ints)
  return out.transpose(0, 2, 1, 3)[:, :tq, :, :d]
