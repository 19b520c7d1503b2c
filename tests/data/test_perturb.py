"""Tests for hat_jax.data.perturb: determinism, 10%-per-word rates, whitespace kept, ALL CAPS."""

import re

import numpy as np
import pytest

from hat_jax.data import perturb

TEXT = ("The quick brown fox jumps over the lazy dog. Hierarchical autoregressive transformers "
        "split text into words;  whitespace\nstays put. Übermäßig lange Wörter kommen auch vor. ") * 40


def _words(text):
  return re.findall(r"\S+", text)


def _whitespace(text):
  return re.findall(r"\s+", text)


@pytest.mark.parametrize("kind", perturb.KINDS)
def test_deterministic_given_seed(kind):
  assert perturb.perturb_text(TEXT, kind, seed=3) == perturb.perturb_text(TEXT, kind, seed=3)


@pytest.mark.parametrize("kind", ["permute", "replace", "delete"])
def test_seed_changes_result_and_whitespace_is_kept(kind):
  a, b = perturb.perturb_text(TEXT, kind, seed=0), perturb.perturb_text(TEXT, kind, seed=1)
  assert a != b and a != TEXT
  assert _whitespace(a) == _whitespace(TEXT)
  assert len(_words(a)) == len(_words(TEXT))


def test_permute_keeps_each_words_characters():
  out = perturb.perturb_text(TEXT, "permute", seed=0)
  for w, p in zip(_words(TEXT), _words(out)):
    assert sorted(w) == sorted(p)


def test_replace_rate_is_ten_percent_of_characters():
  out = perturb.perturb_text(TEXT, "replace", seed=0)
  orig, new = _words(TEXT), _words(out)
  changed = sum(sum(a != b for a, b in zip(w, p)) for w, p in zip(orig, new))
  total = sum(len(w) for w in orig)
  assert all(len(w) == len(p) for w, p in zip(orig, new))
  assert 0.08 < changed / total < 0.12  # expected 0.10 with stochastic rounding


def test_delete_rate_and_words_never_vanish():
  out = perturb.perturb_text(TEXT, "delete", seed=0)
  orig, new = _words(TEXT), _words(out)
  deleted = sum(len(w) - len(p) for w, p in zip(orig, new))
  assert all(len(p) >= 1 for p in new)
  assert 0.08 < deleted / sum(len(w) for w in orig) < 0.12
  for w, p in zip(orig, new):  # p is a subsequence of w
    it = iter(w)
    assert all(c in it for c in p)


def test_all_caps_and_unknown_kind():
  assert perturb.perturb_text("Über alles, ok?", "all_caps") == "ÜBER ALLES, OK?"
  with pytest.raises(ValueError, match="Unknown perturbation"):
    perturb.perturb_text("x", "shuffle")


def test_fraction_zero_is_identity_and_bytes_roundtrip():
  for kind in ("permute", "replace", "delete"):
    assert perturb.perturb_text(TEXT, kind, fraction=0.0) == TEXT
  raw = TEXT.encode() + b"\xff\xfe broken"
  out = perturb.perturb_bytes(raw, "replace", seed=0)
  assert isinstance(out, bytes) and out.endswith(b"broken") or b"\xff" in out


def test_documents_seeded_per_index():
  docs = [TEXT.encode()[:200], TEXT.encode()[200:400]]
  a = perturb.perturb_documents(docs, "delete", seed=5)
  b = perturb.perturb_documents(docs, "delete", seed=5)
  assert a == b and a[0] != docs[0]
  assert perturb.perturb_documents(docs[:1], "delete", seed=5) == a[:1]
  assert np.all([len(x) < len(y) for x, y in zip(a, docs)])
