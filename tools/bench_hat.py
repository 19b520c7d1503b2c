"""HAT vs the byte baseline: training throughput and bytes per backbone position, measured in one run.

  python tools/bench_hat.py                      # configs/hat.py:tiny vs configs/bytes.py:tiny
  python tools/bench_hat.py --size=small --steps=10

Both models get the same batches (same packed rows) and the baseline's stack has the HAT backbone's
width and depth, so the ratio is what hierarchy buys: the backbone runs once per word instead of once
per byte. Steps of the two models are interleaved, so machine load affects both alike.
Bytes per backbone position is measured on the validation splits of the English and German corpora
(`python -m hat_jax.data prepare english german` first); the baseline's is 1 by definition.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import numpy as np
import optax

from configs import bytes as bytes_config
from configs import hat as hat_config
from hat_jax.data import documents, pipeline
from hat_jax.train import lm_tasks


def make_step(task):
  tx = optax.adamw(1e-3)

  @jax.jit
  def step(params, opt_state, batch):
    (loss, _), grads = jax.value_and_grad(lambda p: task.loss(p, batch, None), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = nn.unbox(task.init_params(jax.random.key(0)))
  return step, params, tx.init(params)


def bytes_per_position(corpus: str, task: lm_tasks.HATTask) -> tuple[float, int]:
  """Mean bytes per word (backbone position) over a corpus split, BOS/EOD words excluded."""
  docs = documents.load_documents(_with_corpus(task.config.data, corpus), "validation")
  lengths = [n for d in docs for n in task.splitter.word_lengths(bytes(d))]
  return float(np.mean(lengths)), sum(lengths)


def _with_corpus(data_cfg, corpus):
  cfg = data_cfg.copy_and_resolve_references()
  cfg.unlock()
  cfg.corpus = corpus
  return cfg


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="tiny")
  parser.add_argument("--corpus", default="english", help="training corpus for the timed batches")
  parser.add_argument("--steps", type=int, default=8, help="timed steps per model (after 2 warm-up steps)")
  args = parser.parse_args()

  hat = lm_tasks.HATTask(hat_config.get_config(f"size={args.size},corpus={args.corpus}"))
  base = lm_tasks.BytesTask(bytes_config.get_config(f"size={args.size},corpus={args.corpus}"))
  it = pipeline.train_iterator(hat.rows("train"), hat.config.train.batch_size, seed=0)
  batches = [next(it) for _ in range(args.steps + 2)]
  runners = {"hat": make_step(hat), "bytes": make_step(base)}
  states = {k: (p, o) for k, (_, p, o) in runners.items()}
  elapsed = {k: 0.0 for k in runners}
  for i, batch in enumerate(batches):
    for name, (step, _, _) in runners.items():
      params, opt_state = states[name]
      start = time.perf_counter()
      params, opt_state, loss = step(params, opt_state, batch)
      jax.block_until_ready(loss)
      if i >= 2:  # the first two steps compile
        elapsed[name] += time.perf_counter() - start
      states[name] = (params, opt_state)

  real_bytes = sum(int((b["segment_ids"] > 0).sum()) for b in batches[2:])
  real_words = sum(int((b["word_lengths"] > 0).sum()) for b in batches[2:])
  bb = hat.model_cfg.backbone
  print(f"# HAT vs byte baseline, size={args.size}, backbone {bb.d_model} wide x {bb.num_layers} layers, "
        f"batch {hat.config.train.batch_size} x {hat.config.data.seq_bytes} bytes, {jax.devices()[0].device_kind}")
  print("| model | params | train bytes/s | backbone positions/s | ratio vs baseline |")
  print("|---|---|---|---|---|")
  rate = {k: real_bytes / v for k, v in elapsed.items()}
  for name in ("bytes", "hat"):
    n = sum(x.size for x in jax.tree.leaves(states[name][0]))
    positions = real_words if name == "hat" else real_bytes
    print(f"| {name} | {n:,} | {rate[name]:,.0f} | {positions / elapsed[name]:,.0f} | "
          f"{rate[name] / rate['bytes']:.2f}x |")

  print("\n# Bytes per backbone position (validation splits; BOS/EOD excluded)")
  print("| corpus | HAT splitter (max_word_bytes=%d) | byte baseline | paper (English, DCLM) |" % hat.splitter.max_word_bytes)
  print("|---|---|---|---|")
  for corpus in ("english", "german"):
    try:
      bpp, n = bytes_per_position(corpus, hat)
    except Exception as err:  # noqa: BLE001 -- a missing corpus is reported, not fatal
      print(f"| {corpus} | not prepared ({type(err).__name__}: run `python -m hat_jax.data prepare {corpus}`) | 1 | |")
      continue
    paper = "5.97 (whitespace) vs 4.12 per BPE token" if corpus == "english" else ""
    print(f"| {corpus} ({n / 1e6:.2f} MB) | {bpp:.2f} | 1.00 | {paper} |")


if __name__ == "__main__":
  main()
