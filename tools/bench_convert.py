"""Peak host memory and wall time of `python -m hat_jax.convert from-hf` on a random released-layout checkpoint.

  python tools/bench_convert.py --dir=/tmp/bench_convert                          # 1.2B-param default
  python tools/bench_convert.py --dir=/tmp/bc --backbone_layers=32 --backbone_width=4096 --kv_heads=8 \
      --backbone_mlp=14336                                                         # the released 8B shapes

Writes a random checkpoint in the exact released key layout (bf16, 2 GiB shards; the byte modules of
configs/tfree_hat.py: encoder 6 x 1024, decoder 4 x 1024; the backbone as given), tensor by tensor so that
writing never holds more than one shard, then runs the conversion in a child process and reports its peak
RSS (ru_maxrss) against the checkpoint's size, and its wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def released_config(args) -> dict:
  def stack(width, layers, heads, kv, mlp, window, theta, **extra):
    return dict(vocab_size=256, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, rms_norm_eps=1e-5, intermediate_size=mlp, max_position_embeddings=262144,
                rope_scaling=None, rope_theta=theta, mlp_bias=False, use_cache=True, sliding_window=window,
                key_query_norm=False, key_query_norm_per_head=False, is_neox_style=True, **extra)
  d, big = 1024, args.backbone_width
  cross = lambda hidden, heads: dict(hidden_size=hidden, hidden_size_q=big, hidden_size_kv=d,  # noqa: E731
                                     num_attention_heads=heads, attention_num_kv_heads=heads, word_window_size=1,
                                     key_query_norm=False, key_query_norm_per_head=False)
  return dict(
      encoder_config=stack(d, 6, 8, 8, 2816, 768, 10000.0, cross_attention_config=cross(big, big // 128)),
      backbone_config=stack(big, args.backbone_layers, big // 128, args.kv_heads, args.backbone_mlp, None, 500000.0),
      decoder_config=stack(d, 4, 8, 8, 2816, 768, 10000.0, cross_attention_config=cross(d, 8),
                           cross_attn_every_layer=True),
      model_type="hierarchical_autoregressive_transformer", special_token_dict={"<|eot_id|>": 192},
      max_word_size=100, sliding_window=768, max_position_embeddings=262144, eos_token_id=192)


def write_random(directory: str, config: dict, shard_bytes: int = 2 << 30) -> int:
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from hat_jax import convert  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from hat_jax.models.hat import HAT, HATConfig  # pylint: disable=g-import-not-at-top
  model, max_word = convert.model_config_from_hf(config)
  cfg = HATConfig.from_config(model, max_word)
  one = {k: jax.numpy.zeros((1, 4), jax.numpy.int32) for k in ("bytes", "positions", "segment_ids", "word_ids")}
  one.update({k: jax.numpy.zeros((1, 1), jax.numpy.int32) for k in ("word_starts", "word_positions", "word_segment_ids")})
  one["word_lengths"] = jax.numpy.full((1, 1), 4, jax.numpy.int32)
  abstract = nn.unbox(jax.eval_shape(HAT(cfg).init, jax.random.key(0), one))["params"]
  rng = np.random.default_rng(0)

  def tensors():  # HF layout from our shapes, one tensor at a time
    flat = convert._flat_shapes(abstract)  # pylint: disable=protected-access
    for key, (path, index, kind) in sorted(convert.key_map(model).items()):
      shape = flat[path].shape[1:] if index is not None else flat[path].shape
      ours = (rng.random(shape, np.float32) - 0.5).astype(ml_dtypes.bfloat16)
      yield key, convert._to_hf(kind, ours)  # pylint: disable=protected-access
  convert.write_safetensors(directory, tensors(), shard_bytes=shard_bytes)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory) if n.endswith(".safetensors"))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dir", required=True)
  parser.add_argument("--backbone_layers", type=int, default=16)
  parser.add_argument("--backbone_width", type=int, default=2048)
  parser.add_argument("--kv_heads", type=int, default=8)
  parser.add_argument("--backbone_mlp", type=int, default=8192)
  parser.add_argument("--base_config", default="configs/tfree_hat.py:7b")
  parser.add_argument("--override", action="append", default=[], help="passed to from-hf, e.g. model.backbone.scan=false")
  args = parser.parse_args()
  src, out = os.path.join(args.dir, "hf"), os.path.join(args.dir, "converted")
  start = time.perf_counter()
  size = write_random(src, released_config(args))
  print(f"wrote {size / 2**30:.2f} GiB of random bf16 tensors in {time.perf_counter() - start:.0f} s")
  start = time.perf_counter()
  child = subprocess.Popen([sys.executable, "-m", "hat_jax.convert", "from-hf", src, "--out", out,
                            "--base_config", args.base_config, *[f"--override={o}" for o in args.override]],
                           cwd=_ROOT, stdout=subprocess.DEVNULL)
  _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (not the max over all children)
  returncode = os.waitstatus_to_exitcode(status)
  wall = time.perf_counter() - start
  peak = usage.ru_maxrss * 1024  # Linux: KiB
  print(f"from-hf exit {returncode}: wall {wall:.0f} s, peak RSS {peak / 2**30:.2f} GiB = "
        f"{peak / size:.2f} x the checkpoint ({size / 2**30:.2f} GiB)")


if __name__ == "__main__":
  main()
