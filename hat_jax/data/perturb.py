"""Text perturbations of the HAT robustness study (Neitemeier et al. 2025, §4.4 / App. B.5).

In each word, 10% of the characters are permuted, replaced or deleted; or the whole text is upper
cased (ALL CAPS). Words are maximal runs of non-whitespace; whitespace is never touched, so word
boundaries (and hence HAT's whitespace-driven splits) stay where they were.

"10% of the characters of a word" is fractional for most words (a 5-letter word has 0.5 characters
to perturb). The paper gives no rounding rule, so the count is rounded stochastically:
k = floor(0.1 * n + u), u ~ U[0, 1). The expected count is then exactly 10% of n for every word, and
short words are perturbed sometimes rather than never. Every function is deterministic given `seed`
(numpy PCG64), operates on `str` (characters, not UTF-8 bytes) and has a `bytes` wrapper.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence

import numpy as np

FRACTION = 0.1
KINDS = ("permute", "replace", "delete", "all_caps")
_WORD = re.compile(r"\S+")
_LOWER = string.ascii_lowercase


def _count(n: int, fraction: float, rng: np.random.Generator) -> int:
  return int(np.floor(fraction * n + rng.random()))


def _permute(word: str, fraction: float, rng: np.random.Generator) -> str:
  """Rotates k >= 2 chosen characters among their positions (a plain shuffle may be the identity)."""
  n = len(word)
  k = _count(n, fraction, rng)
  if k == 0 or n < 2:
    return word
  k = max(2, k)  # moving a single character in place changes nothing: permuting needs two
  pos = np.sort(rng.choice(n, size=k, replace=False))
  chars = list(word)
  moved = [chars[p] for p in pos]
  for p, c in zip(pos, moved[1:] + moved[:1]):
    chars[p] = c
  return "".join(chars)


def _replace(word: str, fraction: float, rng: np.random.Generator) -> str:
  """Replaces k characters by a different random ASCII letter (upper case where the original was)."""
  n = len(word)
  k = min(n, _count(n, fraction, rng))
  if k == 0:
    return word
  chars = list(word)
  for p in rng.choice(n, size=k, replace=False):
    old = chars[p]
    new = _LOWER[rng.integers(len(_LOWER))]
    if new == old.lower():
      new = _LOWER[(_LOWER.index(new) + 1) % len(_LOWER)]
    chars[p] = new.upper() if old.isupper() else new
  return "".join(chars)


def _delete(word: str, fraction: float, rng: np.random.Generator) -> str:
  """Deletes k characters, keeping at least one (a word never vanishes and merges its neighbours)."""
  n = len(word)
  k = min(n - 1, _count(n, fraction, rng))
  if k <= 0:
    return word
  drop = set(rng.choice(n, size=k, replace=False).tolist())
  return "".join(c for i, c in enumerate(word) if i not in drop)


_PER_WORD: dict[str, Callable[[str, float, np.random.Generator], str]] = {
    "permute": _permute, "replace": _replace, "delete": _delete}


def perturb_text(text: str, kind: str, seed: int = 0, fraction: float = FRACTION) -> str:
  """`text` with every word perturbed by `kind` (one of KINDS); whitespace is kept as is."""
  if kind == "all_caps":
    return text.upper()
  if kind not in _PER_WORD:
    raise ValueError(f"Unknown perturbation {kind!r}; choose one of {KINDS}.")
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
  rng = np.random.default_rng(seed)
  fn = _PER_WORD[kind]
  return _WORD.sub(lambda m: fn(m.group(0), fraction, rng), text)


def perturb_bytes(doc: bytes, kind: str, seed: int = 0, fraction: float = FRACTION) -> bytes:
  """UTF-8 wrapper of `perturb_text` (invalid bytes survive as surrogate escapes)."""
  text = doc.decode("utf-8", errors="surrogateescape")
  return perturb_text(text, kind, seed, fraction).encode("utf-8", errors="surrogateescape")


def perturb_documents(docs: Sequence[bytes], kind: str, seed: int = 0, fraction: float = FRACTION) -> list[bytes]:
  """Perturbs each document with its own seed (seed, index), so results do not depend on order."""
  return [perturb_bytes(d, kind, int(np.random.SeedSequence([seed, i]).generate_state(1)[0]), fraction)
          for i, d in enumerate(docs)]
