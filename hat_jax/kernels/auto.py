"""`attention_impl="auto"`: per backend and mask, the fastest kernel that computes exactly our mask.

Our Pallas kernel (`block_attention`) evaluates every `MaskSpec` with any positions and segment ids, but
on the masks the vendors' kernels also have, those are faster (docs/kernels.md: cuDNN is 1.6-1.9x our
kernel on an H100 for causal and window masks). So `auto` delegates where a vendor kernel's semantics are
provably ours and keeps our kernel where none has the mask:

  backend  delegate                                     when
  cpu      "xla" (blocked / dense jnp)                  always: no kernel beats XLA's CPU code
  gpu      "cudnn" (cuDNN flash attention)              causal, window, or full mask; arange positions;
                                                        self-attention; bf16/f16; head_dim % 8 == 0 and
                                                        <= 128; no segment ids
  tpu      "splash" (jax's splash attention)            causal, window, causal chunk, or full mask;
                                                        arange positions; self-attention; segment ids
                                                        natively (lengths padded to a multiple of 128)
  any      "xla"                                        one query row (a cached decode step): a matvec
                                                        per head, cheaper than any kernel launch
  else     "pallas" (ours)                              explicit positions (VAR scale ids, KV caches),
                                                        cross-attention, non-causal chunks, segment ids
                                                        on GPU, any mask field beyond causal/window/chunk

The choice (`choose`) is a pure function of (backend, mask, shapes, dtype, which mask arrays are given),
so it is tested on CPU for every case; each delegated call is checked numerically against our reference
(splash in interpret mode on CPU, cuDNN by the GPU tests). Every choice is recorded per call site
(`choices()`), and the trainer prints them once per run.

Segment ids on GPU stay on our kernel. jax.nn's cuDNN call has none; the packed ("THD") layout of jax's
cuDNN module (per-row run offsets) would express packed documents, but on an H200 with jax 0.11.2 it
returned non-finite and wrong values for a batch of two packed rows (2026-11-29), so it is not used.
"""

from __future__ import annotations

import dataclasses
import re
import threading

import jax
import jax.numpy as jnp

from hat_jax.kernels.masks import MaskSpec

IMPLS = ("xla", "pallas", "cudnn", "splash")
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128  # 256 on Hopper and later; 128 keeps the rule independent of the GPU generation
SPLASH_BLOCKS = (512, 256, 128)  # splash tile sizes tried in order; the length must be a multiple of one


@dataclasses.dataclass(frozen=True)
class Choice:
  impl: str  # one of IMPLS
  reason: str  # why, in words, for the run log


def mask_name(spec: MaskSpec) -> str:
  parts = ["causal" if spec.causal else "full"]
  if spec.window is not None:
    parts.append(f"window {spec.window}")
  if spec.chunk is not None:
    parts.append(f"chunk {spec.chunk}")
  return " ".join(parts)


def choose(backend: str, spec: MaskSpec, *, q_len: int, kv_len: int, head_dim: int, dtype, explicit_positions: bool,
           segments: bool, same_segments: bool = True) -> Choice:
  """The implementation `auto` runs for one attention call (`segments`: segment ids are given;
  `same_segments`: the query and key segment ids are the same array, as in self-attention)."""
  dtype = jnp.dtype(dtype).name
  if backend == "cpu":
    return Choice("xla", "CPU: the blocked XLA path")
  if q_len == 1:
    return Choice("xla", "one query row (decode step): dense")
  if explicit_positions:
    return Choice("pallas", "explicit positions: only our kernel masks by arbitrary positions")
  if q_len != kv_len or (segments and not same_segments):
    return Choice("pallas", "cross-attention: the vendor kernels' masks assume self-attention")
  if spec != MaskSpec(causal=spec.causal, window=spec.window, chunk=spec.chunk):
    return Choice("pallas", f"mask {spec} has rules no vendor kernel has")
  if backend == "gpu":
    if spec.chunk is not None:
      return Choice("pallas", "cuDNN has no chunk (block-diagonal) mask")
    if dtype not in CUDNN_DTYPES:
      return Choice("pallas", f"cuDNN flash attention needs bfloat16/float16 inputs, got {dtype}")
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
      return Choice("pallas", f"cuDNN needs head_dim a multiple of 8 and <= {CUDNN_MAX_HEAD_DIM}, got {head_dim}")
    if segments:
      return Choice("pallas", "segment ids: cuDNN's packed layout gave wrong values (jax 0.11.2), our kernel")
    return Choice("cudnn", f"cuDNN, {mask_name(spec)}")
  if backend == "tpu":
    if spec.chunk is not None and not spec.causal:
      return Choice("pallas", "splash has no non-causal chunk mask")
    if spec.chunk is not None and spec.window is not None:
      return Choice("pallas", "splash has no window-and-chunk mask")
    return Choice("splash", f"splash, {mask_name(spec)}" + (", segment ids" if segments else ""))
  return Choice("pallas", f"backend {backend!r}: our kernel")


# ------------------------------------------------------------------------------------------ the run log

_CHOICES: dict[str, Choice] = {}
_LOCK = threading.Lock()


def record(site: str, choice: Choice) -> None:
  with _LOCK:
    _CHOICES[site] = choice  # the latest trace wins: e.g. the step compiled under the mesh, not an init outside it


def choices() -> dict[str, Choice]:
  """Call site -> the implementation `auto` chose there, for every site traced so far in this process."""
  with _LOCK:
    return dict(_CHOICES)


def format_choices(sites: dict[str, Choice]) -> list[str]:
  """One line per implementation: which call sites use it and why (sites grouped by identical reason)."""
  groups: dict[Choice, list[str]] = {}
  for site, choice in sorted(sites.items()):
    site = re.sub(r"layer_\d+", "layer_*", site)  # unscanned stacks: one entry for all their layers
    if site not in groups.setdefault(choice, []):
      groups[choice].append(site)
  return [f"attention {c.impl:>6}: {c.reason}: {', '.join(s)}" for c, s in groups.items()]


# ------------------------------------------------------------------------------------------ cuDNN


def cudnn_attention(q, k, v, spec: MaskSpec, q_segment_ids=None, kv_segment_ids=None) -> jax.Array:
  """cuDNN flash attention with our mask semantics (see `choose` for when it applies: no segment ids)."""
  if q_segment_ids is not None or kv_segment_ids is not None:
    raise ValueError("cudnn_attention takes no segment ids (auto runs our kernel for packed rows).")
  window = None if spec.window is None else (spec.window - 1, 0)
  return jax.nn.dot_product_attention(q, k, v, is_causal=spec.causal, local_window_size=window,
                                      implementation="cudnn")


# ------------------------------------------------------------------------------------------ splash


def splash_block(length: int) -> int:
  """The largest of SPLASH_BLOCKS that divides `length` (a multiple of the smallest)."""
  return next(b for b in SPLASH_BLOCKS if length % b == 0)


def _splash_kernel(spec: MaskSpec, length: int, heads: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm  # pylint: disable=g-import-not-at-top
  shape = (length, length)
  if spec.window is not None:
    mask = sm.LocalMask(shape, window_size=(spec.window - 1, 0), offset=0)
  elif spec.chunk is not None:
    mask = sm.ChunkedCausalMask(shape, chunk_size=spec.chunk)
  elif spec.causal:
    mask = sm.CausalMask(shape)
  else:
    mask = sm.FullMask(shape)
  b = splash_block(length)
  sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                        block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  # Built per trace (its mask tables become constants of that trace); the costly part, the numpy tile
  # analysis of the mask, is cached inside splash (`splash_attention_mask_info._process_mask`).
  return sk.make_splash_mha_single_device(sm.MultiHeadMask([mask] * heads), block_sizes=sizes, interpret=interpret)


def splash_attention(q, k, v, spec: MaskSpec, q_segment_ids=None, kv_segment_ids=None, *,
                     interpret: bool = False) -> jax.Array:
  """jax's splash attention on our layout ([batch, T, heads, head_dim], GQA) with our mask semantics."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk  # pylint: disable=g-import-not-at-top
  b, t, h, d = q.shape
  # Splash tiles the length by 128; pad to a multiple. Padded keys must stay invisible to real queries:
  # a causal mask hides them (they come after every real query); otherwise they get segment id -1, which
  # no real token has (ours are >= 0).
  pad = -t % SPLASH_BLOCKS[-1]
  if pad and q_segment_ids is None and not spec.causal:
    q_segment_ids = kv_segment_ids = jnp.zeros((b, t), jnp.int32)
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    if q_segment_ids is not None:
      q_segment_ids, kv_segment_ids = (jnp.pad(s, ((0, 0), (0, pad)), constant_values=-1)
                                       for s in (q_segment_ids, kv_segment_ids))
  kernel = _splash_kernel(spec, t + pad, h, interpret)
  to_hd = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [b, t, h, d] <-> [b, h, t, d]
  q_hd = to_hd(q) * jnp.asarray(d**-0.5, q.dtype)
  if q_segment_ids is None:
    out = jax.vmap(kernel)(q_hd, to_hd(k), to_hd(v))
  else:
    segments = sk.SegmentIds(q=q_segment_ids, kv=kv_segment_ids)
    out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(q_hd, to_hd(k), to_hd(v), segments)
  return to_hd(out)[:, :t]
