"""Score text the way byte-level LM papers do: bits per byte, and multiple-choice accuracy with the
lm-eval-harness log-likelihood convention, for the byte-level LM tasks (`hat`, both variants, and `bytes`).

  scorer = Scorer(task, params)                  # params: unboxed, e.g. trainer.restore_params(...)[1]
  scorer.log_probs("Call me Ishmael.")            # float64 [16]: log p(byte i | bytes before it)
  bits_per_byte(scorer, "moby.txt")               # {"bits_per_byte", "bytes", "nll_bits"}
  multiple_choice(scorer, "items.jsonl")          # {"acc", "acc_norm", "items"}

CLI: `python -m hat_jax.main --config=... --workdir=... --mode=score --score_text=F --score_choices=F`.

Conventions:
  * A text is one document, built exactly as in training (`hat_jax.data.pipeline`): `[BOS] text [EOD]`,
    split into words by the task's splitter, scored from the document start. Every byte of the text is
    scored, the first one included (given BOS). EOD is scored only with `end_of_document=True` (one more
    entry at the end); then the log-probs sum to minus the training loss's total NLL on that document.
  * Without BOS (`data.bos=False`, the released TFree-HAT framing: `text [EOD]`) the text's first byte has
    no context and is not scored: its entry is 0, and `Scorer.unscored_bytes(text)` = 1 (the paper HAT:
    the first word's bytes, since that design never predicts a document's first word). Sums, bits per byte
    and `end_of_document` totals then cover the scored bytes only, and `bits_per_byte` divides by their
    number.
  * Natural logs, computed in float32 on the device (the training forward), returned as float64 on the
    host, where every sum over them is taken.
  * The paper HAT predicts each word as `c_1..c_n [W]`. log p([W] | word j) is added to the first byte of
    word j+1: that the word ended is only known once the next byte starts a new word, so each entry
    depends on the bytes up to it alone, and the entries sum to the model's log-likelihood of the text
    (the paper's bits per byte count the [W] predictions too). The last word's [W] is scored only with
    `end_of_document` (in the EOD entry, with EOD's own [W]).
  * Long texts are scored in windows of one training row (`data.seq_bytes` bytes, `data.seq_words`
    words), cut at word boundaries. The first window is the longest run of whole words from the document
    start. Each later window starts with the previous words as context, as many as fit in
    `context_fraction` of a row (bytes and words; at least one word), and scores the words after them that
    fit. Such a window starts mid-document exactly like a training row that continues a document (no
    BOS, positions from 0, a new segment), and its context bytes are not scored again. A text that fits
    one row is one window, so its scores do not depend on `context_fraction`.
  * Batching: the windows of all texts are packed into rows as separate segments, as training packs
    documents (nothing attends across segments), and the rows go through one jitted step in batches of
    `batch_size` rows. Which texts share a row changes float32 rounding only (tested).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from hat_jax.data import pipeline
from hat_jax.losses import LN2
from hat_jax.data.batching import stack_rows
from hat_jax.data.splitter import PAD


class ScoreInputError(ValueError):
  """A scoring input (text file, JSONL of choices) that cannot be scored; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class _Window:
  """Words [first, end) of text `text`'s stream go into one row; the bytes of words [scored, end) are scored."""

  text: int
  first: int
  scored: int
  end: int


@dataclasses.dataclass(frozen=True)
class ChoiceItem:
  context: str
  choices: tuple[str, ...]
  label: int


class Scorer:
  """Per-byte log-probabilities of texts under a byte-level LM task's params (see the module docstring)."""

  def __init__(self, task: Any, params: Any, *, batch_size: int = 8, context_fraction: float = 0.5):
    if not hasattr(task, "splitter") or not hasattr(task, "byte_log_probs"):
      raise ValueError(f"{type(task).__name__} is not a byte-level LM task; scoring works for the tasks 'hat' "
                       "and 'bytes' (hat_jax.train.lm_tasks).")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not 0.0 <= context_fraction < 1.0:
      raise ValueError(f"context_fraction is the share of a row given to context in later windows, in [0, 1); "
                       f"got {context_fraction}.")
    self.task, self.params, self.batch_size = task, params, int(batch_size)
    self.context_fraction = float(context_fraction)
    d = task.config.data
    self.bos = bool(d.get("bos", True))
    self._paper = getattr(getattr(task, "model_cfg", None), "variant", None) == "paper"
    self.seq_bytes, self.seq_words = int(d.seq_bytes), int(d.seq_words)
    self._step = jax.jit(task.byte_log_probs)  # (params, batch) -> (byte_lp [B, S], word_end_lp [B, W])

  # -- windows ------------------------------------------------------------------------------------
  def _windows(self, index: int, offsets: np.ndarray, num_words: int) -> list[_Window]:
    """Windows over words [0, num_words) of one text's stream; offsets: int64 [>= num_words + 1]."""
    offsets = offsets[:num_words + 1]
    fit = lambda lo: pipeline.words_that_fit(offsets, lo, self.seq_bytes, self.seq_words)  # noqa: E731
    ctx_bytes = int(self.context_fraction * self.seq_bytes)
    ctx_words = int(self.context_fraction * self.seq_words)
    # Word 0 is BOS (context only), or without BOS the text's first word (scored; its first byte gets 0).
    windows, first, scored, end = [], 0, int(self.bos), fit(0)
    while scored < num_words:
      while end <= scored and first < scored - 1:  # the context left no room for the next word: shorten it
        first += 1
        end = fit(first)
      if end <= scored:
        raise ScoreInputError(
            f"text {index}: words {scored - 1} and {scored} ({offsets[scored + 1] - offsets[scored - 1]} bytes) do "
            f"not fit one row of data.seq_bytes={self.seq_bytes}, and a word is scored only after at least one "
            "word of context. Raise data.seq_bytes (to at least 2 x data.max_word_bytes).")
      windows.append(_Window(index, first, scored, end))
      # At least one word of context: a word's first byte is predicted at the last byte of the word before.
      scored, first = end, end - 1
      while first > 0 and offsets[scored] - offsets[first - 1] <= ctx_bytes and scored - first + 1 <= ctx_words:
        first -= 1
      end = fit(first)
    return windows

  # -- scoring ------------------------------------------------------------------------------------
  def log_probs(self, texts: str | bytes | Sequence[str | bytes], *, end_of_document: bool = False
                ) -> np.ndarray | list[np.ndarray]:
    """log p(byte i | BOS and bytes 0..i-1 of the same text), float64 [len(text)] per text (+1 entry for
    EOD with `end_of_document`; a special token's text counts as its one byte); without BOS the first
    `unscored_bytes(text)` entries are 0 (not scored).
    One text (str, UTF-8 encoded, or bytes) gives one array, a sequence a list."""
    single = isinstance(texts, (str, bytes, bytearray))
    data = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in ([texts] if single else texts)]
    streams = [pipeline.encode_documents([t], self.task.splitter, first_index=i, bos=self.bos)
               for i, t in enumerate(data)]
    # One entry per byte the model sees: a special token's text (splitter.special_tokens) is one byte.
    outs = [np.zeros(int(s.word_offsets[-1]) - int(self.bos) - 1 + int(end_of_document), np.float64)
            for s in streams]
    windows = []
    for i, stream in enumerate(streams):
      num_words = len(stream.word_lengths) - (0 if end_of_document else 1)  # without end: drop the EOD word
      windows += self._windows(i, stream.word_offsets, num_words)
    if not windows:
      return outs[0] if single else outs

    # Pack windows into rows (greedy, in order), as pipeline packs documents.
    rows, row, row_bytes, row_words = [], [], 0, 0
    for w in windows:
      off = streams[w.text].word_offsets
      nb, nw = int(off[w.end] - off[w.first]), w.end - w.first
      if row and (row_bytes + nb > self.seq_bytes or row_words + nw > self.seq_words):
        rows.append(row)
        row, row_bytes, row_words = [], 0, 0
      row.append((w, row_bytes, row_words))  # the window and where it starts in the row (byte, word slot)
      row_bytes, row_words = row_bytes + nb, row_words + nw
    rows.append(row)

    results = []
    for lo in range(0, len(rows), self.batch_size):  # dispatch every batch first, then read them back
      batch = self._batch([self._row(streams, r) for r in rows[lo:lo + self.batch_size]])
      results.append(self._step(self.params, batch))
    byte_lp, word_end_lp = (np.concatenate(x).astype(np.float64) for x in zip(*jax.device_get(results)))

    shift = int(self.bos)  # stream byte p is text byte p - shift (BOS first, if any)
    for r, row in enumerate(rows):
      for w, rb, rw in row:
        stream, out = streams[w.text], outs[w.text]
        off = stream.word_offsets
        lo, hi = int(off[w.scored]), int(off[w.end])  # stream bytes scored
        start = rb - int(off[w.first])  # row slot of stream byte p: start + p
        out[lo - shift:hi - shift] += byte_lp[r, start + lo:start + hi]  # a segment's first byte gets 0
        # log p([W] | word j) (paper HAT; 0 otherwise) goes to the first byte of word j+1, or to EOD's entry
        # for EOD's own [W]; the last text word's [W] only when EOD is scored (then word j+1 is EOD).
        last = len(out) - 1 + shift  # stream position of the last entry (EOD's with end_of_document)
        for j in range(w.scored, w.end):
          at = int(off[j + 1]) if off[j + 1] <= last else (last if end_of_document else None)
          if at is not None:
            out[at - shift] += word_end_lp[r, rw + j - w.first]
    return outs[0] if single else outs

  def unscored_bytes(self, text: str | bytes) -> int:
    """How many leading bytes of `text` `log_probs` cannot score (their entries are 0): none with BOS;
    without BOS (`data.bos=False`) the first byte, which has no context, or for the paper HAT the first
    word, which that design never predicts."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if self.bos or not data:
      return 0
    return len(self.task.splitter.split(data)[0]) if self._paper else 1

  def _row(self, streams: list[pipeline.Stream], row: list) -> dict[str, np.ndarray]:
    """One packed row of windows, each its own segment (`pipeline.make_row` on a stream of the windows)."""
    data, lengths, starts = [], [], []
    for w, _, _ in row:
      s, off = streams[w.text], streams[w.text].word_offsets
      data.append(s.data[off[w.first]:off[w.end]])
      lengths.append(s.word_lengths[w.first:w.end])
      starts.append(np.arange(w.end - w.first) == 0)  # each window opens a segment, as a document does
    stream = pipeline.Stream(np.concatenate(data), np.concatenate(lengths), np.concatenate(starts))
    return pipeline.make_row(stream, stream.word_offsets, 0, len(stream.word_lengths), self.seq_bytes, self.seq_words)

  def _batch(self, rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows padded to `batch_size` with empty rows (segment 0 everywhere), so every batch has one shape."""
    empty = {k: np.full_like(v, PAD) if k in ("bytes", "targets") else np.zeros_like(v) for k, v in rows[0].items()}
    return stack_rows(rows + [empty] * (self.batch_size - len(rows)))


# -- bits per byte ------------------------------------------------------------------------------------
def read_text(path: str | os.PathLike) -> bytes:
  """The bytes of a non-empty UTF-8 text file; anything else is a ScoreInputError saying what is wrong."""
  with open(path, "rb") as f:
    data = f.read()
  if not data:
    raise ScoreInputError(f"{path} is empty: there are no bytes to score.")
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ScoreInputError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); re-encode it as UTF-8, e.g. "
                          "with `iconv -t UTF-8`.") from e
  return data


def bits_per_byte(scorer: Scorer, path: str | os.PathLike) -> dict[str, float]:
  """Bits per byte of a UTF-8 text file scored as one document: total NLL in bits over the scored bytes /
  their number ("bytes"). With BOS every byte of the file is scored (the first given BOS), so "bytes" is
  the file's size; without BOS (`data.bos=False`) the first byte is not (`Scorer.unscored_bytes`: the paper
  HAT's first word), and "bytes" is the file's size minus those. EOD is not scored. Long files are scored
  in windows (module docstring)."""
  data = read_text(path)
  log_probs = scorer.log_probs(data)  # one entry per byte the model sees (special tokens: one byte each)
  scored = len(log_probs) - scorer.unscored_bytes(data)
  if scored < 1:
    raise ScoreInputError(f"{path} holds {len(data)} byte(s), none of which can be scored without a BOS byte "
                          "(data.bos=False: the first byte, or the paper HAT's first word, has no context).")
  nll_bits = -float(np.sum(log_probs)) / LN2
  return {"bits_per_byte": nll_bits / scored, "bytes": float(scored), "nll_bits": nll_bits}


# -- multiple choice ----------------------------------------------------------------------------------
def read_choices(path: str | os.PathLike) -> list[ChoiceItem]:
  """Items of a JSONL file, one `{"context": str, "choices": [str, ...], "label": int}` per line (blank
  lines skipped). Anything else is a ScoreInputError naming the line."""
  items = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ScoreInputError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one "
                              'object {"context": str, "choices": [str, ...], "label": int}.') from e
      if not isinstance(obj, dict):
        raise ScoreInputError(f'{where}: expected an object {{"context": ..., "choices": ..., "label": ...}}, got '
                              f"{type(obj).__name__}.")
      missing = [k for k in ("context", "choices", "label") if k not in obj]
      if missing:
        raise ScoreInputError(f"{where}: missing key(s) {missing}; each item needs context (str), choices "
                              "(a non-empty list of non-empty str) and label (int index into choices).")
      context, choices, label = obj["context"], obj["choices"], obj["label"]
      if not isinstance(context, str):
        raise ScoreInputError(f"{where}: context must be a string, got {type(context).__name__}.")
      if not isinstance(choices, list) or not choices:
        raise ScoreInputError(f"{where}: choices must be a non-empty list of strings, got {choices!r}.")
      bad = [i for i, c in enumerate(choices) if not isinstance(c, str) or not c]
      if bad:
        raise ScoreInputError(f"{where}: choice {bad[0]} is {choices[bad[0]]!r}; every choice must be a non-empty "
                              "string (its log-likelihood is normalised by its length in acc_norm).")
      if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise ScoreInputError(f"{where}: label must be an int index into the {len(choices)} choices "
                              f"(0..{len(choices) - 1}), got {label!r}.")
      try:
        context.encode("utf-8"), [c.encode("utf-8") for c in choices]
      except UnicodeEncodeError as e:
        raise ScoreInputError(f"{where}: text is not encodable as UTF-8 ({e.reason}, e.g. a lone surrogate "
                              "escape like \\ud800).") from e
      items.append(ChoiceItem(context, tuple(choices), label))
  if not items:
    raise ScoreInputError(f"{path} holds no items.")
  return items


def choice_log_likelihoods(scorer: Scorer, items: Sequence[ChoiceItem]) -> list[np.ndarray]:
  """float64 [num_choices] per item: log p(choice | context), the sum of the per-byte log-probs over the
  choice's bytes in the text `context + choice`, which is split into words as one text (as a byte-level
  model sees it; scoring the choice after the context's own words could cut words differently). Without
  BOS (`data.bos=False`) an empty context leaves the choice's first byte unscored (`Scorer.unscored_bytes`)."""
  texts = [(it.context + c).encode("utf-8") for it in items for c in it.choices]
  lps = iter(scorer.log_probs(texts))
  return [np.array([float(np.sum(next(lps)[len(it.context.encode("utf-8")):])) for _ in it.choices])
          for it in items]


def multiple_choice(scorer: Scorer, path: str | os.PathLike) -> dict[str, float]:
  """lm-eval-harness multiple-choice accuracy over a JSONL file (`read_choices`). acc: argmax of the choices'
  log-likelihoods is the label; acc_norm: argmax of log-likelihood / the choice's length in UTF-8 bytes
  (lm-eval divides by `len(choice)`, characters, which is the same for ASCII). Ties go to the first
  choice, as numpy's argmax (and lm-eval's) does."""
  items = read_choices(path)
  lls = choice_log_likelihoods(scorer, items)
  acc = [int(np.argmax(ll)) == it.label for it, ll in zip(items, lls)]
  acc_norm = [int(np.argmax(ll / np.array([len(c.encode("utf-8")) for c in it.choices]))) == it.label
              for it, ll in zip(items, lls)]
  return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), "items": float(len(items))}
