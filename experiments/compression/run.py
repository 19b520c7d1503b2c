"""HAT compression table: UTF-8 bytes per backbone position, word splitters vs byte-level BPE.

  python -m hat_jax.data prepare english german           # once (downloads)
  python -m experiments.compression.run --out runs/compression   # from the repo root

A HAT backbone sees one position per word, a BPE transformer one per token, so bytes per position is
what sets the backbone's sequence length (higher = fewer positions = less backbone compute). Measured
on held-out (validation) text of:
  english       Gutenberg books + State of the Union addresses (the BPE's training domain)
  english_docs  LibreOffice help + man pages, English (page-aligned with `german`)
  german        the same pages in German
Positions per scheme:
  whitespace    the HAT paper's rule: split at Unicode whitespace, the whitespace appended to the
                previous word (regex  \\s+|\\S+\\s*  : only leading whitespace of a document stands alone)
  hat-splitter  HATSplitter().split_with_limit(text, 100): the released rule (UAX#29 words, punctuation,
                camelCase; newlines and runs of spaces are words of their own)
  bpe-<V>       a byte-level BPE (HuggingFace tokenizers, GPT-2 pre-tokenisation) with vocabulary V,
                trained on the `english` train split
Both splitters are capped at MAX_WORD_BYTES per word (the released models' max_word_size), so a longer
word counts as ceil(len / MAX_WORD_BYTES) positions. Documents are split independently.
Writes <out>/compression.csv, <out>/compression.json (+ the tokenizers) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import time

from hat_splitter import HATSplitter
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from hat_jax.data.corpora import load_corpus

MAX_WORD_BYTES = 100
EVAL_CORPORA = ("english", "english_docs", "german")
PAPER = {  # bytes per position reported by the HAT paper (Neitemeier et al. 2025, Fig. 2)
    "HAT paper, DCLM English": {"whitespace": 5.97, "bpe": 4.12},
    "TFree-HAT (unverified), English": {"hat-splitter": 5.18, "bpe (Llama-3.1)": 4.28},
    "TFree-HAT (unverified), German": {"hat-splitter": 6.03, "bpe (Llama-3.1)": 3.33},
}
_WHITESPACE_WORD = re.compile(r"\s+|\S+\s*")  # str patterns: \s is Unicode whitespace


def _capped(lengths) -> int:
  """Positions for words of these byte lengths when each is cut into MAX_WORD_BYTES chunks."""
  return sum(-(-n // MAX_WORD_BYTES) for n in lengths)


def whitespace_positions(text: str) -> int:
  return _capped(len(w.encode("utf-8")) for w in _WHITESPACE_WORD.findall(text))


def hat_splitter_positions(splitter: HATSplitter, text: str) -> int:
  return len(splitter.split_with_limit(text, MAX_WORD_BYTES))


def train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
  """Byte-level BPE as in GPT-2: 256 byte symbols + merges, GPT-2 regex pre-tokenisation."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                special_tokens=[])
  tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
  return tok


def bpe_positions(tok: Tokenizer, texts: list[str]) -> int:
  return sum(len(enc.ids) for enc in tok.encode_batch(texts, add_special_tokens=False))


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.machine()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="runs/compression")
  parser.add_argument("--vocab-sizes", default="4096,16384,65536")
  parser.add_argument("--german-bpe", type=int, default=65536,
                      help="also train a BPE of this vocabulary on the `german` train split, as a "
                           "reference for a tokenizer that knows German (0 = skip)")
  parser.add_argument("--cache-dir", default=None, help="corpus cache (default: hat_jax.data's)")
  args = parser.parse_args(argv)
  vocab_sizes = [int(v) for v in args.vocab_sizes.split(",")]
  os.makedirs(args.out, exist_ok=True)

  def texts(name: str, split: str) -> list[str]:
    try:
      docs = load_corpus(name, split, args.cache_dir)
    except (FileNotFoundError, OSError, ValueError) as e:
      sys.exit(f"error: corpus {name!r} is not prepared ({e}); run "
               f"`python -m hat_jax.data prepare english german` first.")
    return [d.decode("utf-8") for d in docs]

  train = texts("english", "train")
  evals = {name: texts(name, "validation") for name in EVAL_CORPORA}
  nbytes = {name: sum(len(t.encode("utf-8")) for t in ts) for name, ts in evals.items()}
  splitter = HATSplitter()
  positions = {name: {} for name in EVAL_CORPORA}
  for name, ts in evals.items():
    positions[name]["whitespace"] = sum(whitespace_positions(t) for t in ts)
    positions[name]["hat-splitter"] = sum(hat_splitter_positions(splitter, t) for t in ts)
  train_seconds = {}
  for v in vocab_sizes:
    t0 = time.perf_counter()
    tok = train_bpe(train, v)
    train_seconds[f"bpe-{v // 1024}k"] = round(time.perf_counter() - t0, 1)
    tok.save(os.path.join(args.out, f"bpe_{v}.json"))
    for name, ts in evals.items():
      positions[name][f"bpe-{v // 1024}k"] = bpe_positions(tok, ts)

  if args.german_bpe:
    # Not part of the paper's comparison (its BPE is trained on the English pretraining data); it
    # separates "BPE on a language it was not trained on" from "BPE on German".
    t0 = time.perf_counter()
    tok = train_bpe(texts("german", "train"), args.german_bpe)
    key = f"bpe-{args.german_bpe // 1024}k-de"
    train_seconds[key] = round(time.perf_counter() - t0, 1)
    tok.save(os.path.join(args.out, f"bpe_{args.german_bpe}_de.json"))
    for name, ts in evals.items():
      positions[name][key] = bpe_positions(tok, ts)

  schemes = list(positions[EVAL_CORPORA[0]])
  rows = []
  for name in EVAL_CORPORA:
    row = {"corpus": f"{name} validation", "bytes": nbytes[name], "documents": len(evals[name])}
    for s in schemes:
      row[f"{s} positions"] = positions[name][s]
      row[f"{s} bytes/pos"] = round(nbytes[name] / positions[name][s], 3)
    rows.append(row)

  with open(os.path.join(args.out, "compression.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  meta = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
          "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
          "max_word_bytes": MAX_WORD_BYTES, "bpe_train_bytes": sum(len(t.encode()) for t in train),
          "bpe_train_seconds": train_seconds, "paper": PAPER, "rows": rows}
  with open(os.path.join(args.out, "compression.json"), "w") as f:
    json.dump(meta, f, indent=2)

  print("| corpus (validation) | MB | " + " | ".join(schemes) + " | ws / bpe-" +
        f"{vocab_sizes[-1] // 1024}k positions |")
  print("|---|---|" + "---|" * len(schemes) + "---|")
  last = f"bpe-{vocab_sizes[-1] // 1024}k"
  for name, row in zip(EVAL_CORPORA, rows):
    ratio = positions[name]["whitespace"] / positions[name][last]
    print(f"| {name} | {nbytes[name] / 1e6:.2f} | " +
          " | ".join(f"{row[f'{s} bytes/pos']:.2f}" for s in schemes) + f" | {ratio:.2f} |")
  print(f"\nBPE trained on english train ({meta['bpe_train_bytes'] / 1e6:.1f} MB), seconds: "
        f"{train_seconds}. Machine: {meta['machine']}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
