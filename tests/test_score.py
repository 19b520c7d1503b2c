"""hat_jax.score: per-byte log-probs against the models' own training forward (tfree HAT, paper HAT, byte
baseline), windows for long texts, batching, lm-eval multiple choice against a hand count, input errors,
and `--mode=score` end to end on a 2-step checkpoint."""

import functools
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import bytes as bytes_config
from configs import hat as hat_config
from hat_jax import score
from hat_jax.data import pipeline
from hat_jax.data.batching import stack_rows
from hat_jax.train import registry, trainer

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_TEXT = os.path.join(_ROOT, "tests", "data", "score_sample.txt")
SAMPLE_CHOICES = os.path.join(_ROOT, "tests", "data", "score_sample.jsonl")
CONFIGS = {"tfree": "test,corpus=toy", "paper": "test,corpus=toy,variant=paper", "bytes": None}
SHORT = "Call me Ishmael.  Some years ago--never mind"  # one training row at size=test (64 bytes)


def make_config(variant):
  if variant == "bytes":
    return bytes_config.get_config("size=test,corpus=toy")
  return hat_config.get_config(CONFIGS[variant])


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
  """(variant, task, params, scorer) with randomly initialised params; one scorer (one compile) per variant."""
  task = registry.make_task(make_config(request.param))
  params = nn.unbox(jax.jit(task.init_params)(jax.random.key(0)))
  return request.param, task, params, score.Scorer(task, params, batch_size=4)


# -- an independent reference: the model's training forward on training rows --------------------------
@functools.cache
def training_forward(task):
  """The model's plain forward on a packed batch, jitted: next-byte logits [B, S, 256] (tfree HAT, byte
  baseline), or the paper HAT's per-word (logits [B, W, M+1, 256], targets, mask)."""
  if task.config.task == "bytes":
    return jax.jit(lambda p, b: task.model.apply(p, b["bytes"], positions=b["positions"],
                                                 segment_ids=b["segment_ids"])[0])
  return jax.jit(task.model.apply)


def forward_log_probs(variant, task, params, rows):
  """Per row: log p(bytes[t]) per row slot [S] and log p([W] | word j) per word slot [W] (paper; zeros
  otherwise), read in float64 numpy off the training forward on `pipeline.make_row` rows (batched in
  16s, so a few shapes compile)."""
  padded = rows + [rows[0]] * (-len(rows) % 16)
  out = training_forward(task)(params, stack_rows(padded))
  out = [np.asarray(x) for x in out] if variant == "paper" else np.asarray(out)
  result = []
  for r, row in enumerate(rows):
    byte_lp, word_end_lp = np.zeros(row["bytes"].shape), np.zeros(row["word_lengths"].shape)
    if variant == "paper":
      logits, targets, mask = (x[r] for x in out)
      logp = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
      for j, (start, length) in enumerate(zip(row["word_starts"], row["word_lengths"])):
        for i in range(length + 1):
          if mask[j, i]:
            if i < length:
              byte_lp[start + i] = logp[j, i, targets[j, i]]
            else:
              word_end_lp[j] = logp[j, i, targets[j, i]]
    else:
      logp = np.asarray(jax.nn.log_softmax(out[r], axis=-1), np.float64)
      t = np.arange(1, len(row["bytes"]))
      byte_lp[1:] = np.where(row["loss_mask"][:-1] > 0, logp[t - 1, row["bytes"][1:]], 0.0)
    result.append((byte_lp, word_end_lp))
  return result


def reference_log_probs(variant, task, params, text: bytes, end: bool, context_fraction=0.5, bos=True):
  """The module docstring's convention, spelled out on the training rows of the document: windows of whole
  words built by `make_row` on the document's own stream (a later window is a training row that continues
  the document), each scored word's bytes, and a word's [W] on the next word's first byte. `bos=False`:
  the document is `text [EOD]`, its first word is scored from the start (its first byte gets nothing)."""
  stream = pipeline.encode_documents([text], task.splitter, bos=bos)
  d = task.config.data
  num_words = len(stream.word_lengths) - (0 if end else 1)
  off = stream.word_offsets[:num_words + 1]
  shift = int(bos)  # stream byte p is text byte p - shift
  windows, first, scored = [], 0, shift
  while scored < num_words:
    stop = pipeline.words_that_fit(off, first, d.seq_bytes, d.seq_words)
    windows.append((first, scored, stop))
    first, scored = stop - 1, stop
    while (first > 0 and off[scored] - off[first - 1] <= context_fraction * d.seq_bytes
           and scored - first + 1 <= context_fraction * d.seq_words):
      first -= 1
  rows = [pipeline.make_row(stream, stream.word_offsets, a, e, d.seq_bytes, d.seq_words) for a, _, e in windows]
  out = np.zeros(len(text) + end)
  for (first, scored, stop), (byte_lp, word_end_lp) in zip(windows, forward_log_probs(variant, task, params, rows)):
    for p in range(off[scored], off[stop]):
      out[p - shift] += byte_lp[p - off[first]]
    last = len(out) - 1 + shift  # stream position of the last entry
    for j in range(scored, stop):
      at = off[j + 1] if off[j + 1] <= last else (last if end else None)
      if at is not None:
        out[at - shift] += word_end_lp[j - first]
  return out, len(windows)


def test_log_probs_sum_to_the_training_loss(model):
  """A text that fits one row, EOD included: minus the summed log-probs is the task's own training loss
  times its prediction count (bits_per_byte counts bytes; the paper's [W] predictions are in it too)."""
  _, task, params, scorer = model
  text = SHORT.encode()
  lp = scorer.log_probs(text, end_of_document=True)
  assert lp.dtype == np.float64 and lp.shape == (len(text) + 1,)
  rows = pipeline.PackedRows(pipeline.encode_documents([text], task.splitter), task.config.data.seq_bytes,
                             task.config.data.seq_words)
  assert len(rows) == 1
  batch = {k: v[None] for k, v in rows[0].items()}
  _, metrics = jax.jit(task.loss)(params, batch, jax.random.key(0))
  total_nll = float(metrics["bits_per_byte"]) * math.log(2) * (len(text) + 1)
  np.testing.assert_allclose(-lp.sum(), total_nll, rtol=1e-5)
  # Without EOD: the same entries for the text's bytes (later bytes never change earlier predictions).
  np.testing.assert_allclose(scorer.log_probs(text), lp[:-1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("end", [False, True])
def test_log_probs_are_the_training_forward_per_byte_in_windows(model, end):
  """Per byte, the short text (one row) and the sample passage (1,118 bytes: ~30 windows of 64 bytes)
  against the model's training forward on the rows the convention defines."""
  variant, task, params, scorer = model
  with open(SAMPLE_TEXT, "rb") as f:
    passage = f.read()
  for text, min_rows in [(SHORT.encode(), 1), (passage, len(passage) // task.config.data.seq_bytes)]:
    expected, rows = reference_log_probs(variant, task, params, text, end)
    assert rows >= min_rows
    got = scorer.log_probs(text, end_of_document=end)
    assert got.shape == expected.shape and np.all(got < 0)  # every byte scored, each once
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_batched_scoring_equals_scoring_each_text_alone(model):
  """Texts packed together (as segments of shared rows, in batches with padding rows) score as each one
  alone; the empty text scores nothing, or only its EOD."""
  _, _, _, scorer = model
  with open(SAMPLE_TEXT, "rb") as f:
    passage = f.read()
  texts = [passage[:300], b"", b"a", SHORT.encode(), "naïve café, 東京".encode(), passage[500:]]
  for end in (False, True):
    together = scorer.log_probs(texts, end_of_document=end)
    for text, got in zip(texts, together):
      assert got.shape == (len(text) + end,)
      np.testing.assert_allclose(got, scorer.log_probs(text, end_of_document=end), rtol=1e-5, atol=1e-5)


def test_bits_per_byte_of_a_file(model, tmp_path):
  _, _, _, scorer = model
  result = score.bits_per_byte(scorer, SAMPLE_TEXT)
  with open(SAMPLE_TEXT, "rb") as f:
    data = f.read()
  assert result["bytes"] == len(data) == 1118
  np.testing.assert_allclose(result["bits_per_byte"], -scorer.log_probs(data).sum() / math.log(2) / len(data),
                             rtol=1e-12)
  assert 4 < result["bits_per_byte"] < 12  # random init: near log2(256) = 8 bits per byte
  (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
  with pytest.raises(score.ScoreInputError, match=r"latin1.txt is not UTF-8 text \(byte 3"):
    score.bits_per_byte(scorer, tmp_path / "latin1.txt")
  (tmp_path / "empty.txt").write_bytes(b"")
  with pytest.raises(score.ScoreInputError, match="empty.txt is empty"):
    score.bits_per_byte(scorer, tmp_path / "empty.txt")


# -- documents without BOS (data.bos=False, the released TFree-HAT framing: `text [EOD]`) ----------------
@pytest.fixture(scope="module")
def no_bos(model):
  """(variant, task, params, scorer) as `model`, with data.bos=False (the same params)."""
  variant, _, params, _ = model
  config = make_config(variant)
  config.data.bos = False
  task = registry.make_task(config)
  return variant, task, params, score.Scorer(task, params, batch_size=4)


def test_without_bos_the_first_byte_is_not_scored(model, no_bos):
  """Per byte against the training forward on `text [EOD]` rows (one row, and the passage's ~30 windows);
  the first byte (the paper HAT: the first word) is not scored, every other byte is; with EOD the entries sum
  to minus the training loss's total NLL on the document's row."""
  variant, task, params, scorer = no_bos
  with open(SAMPLE_TEXT, "rb") as f:
    passage = f.read()
  first_word = len(task.splitter.split(SHORT.encode())[0])
  assert scorer.unscored_bytes(SHORT) == (first_word if variant == "paper" else 1) and scorer.unscored_bytes("") == 0
  assert model[3].unscored_bytes(SHORT) == 0  # with BOS every byte is scored
  for text, end in [(SHORT.encode(), True), (passage, False)]:
    expected, _ = reference_log_probs(variant, model[1], params, text, end, bos=False)
    got = scorer.log_probs(text, end_of_document=end)
    n = scorer.unscored_bytes(text)
    assert got.shape == expected.shape == (len(text) + end,)
    assert np.all(got[:n] == 0) and np.all(got[n:] < 0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  text = SHORT.encode()
  rows = pipeline.PackedRows(pipeline.encode_documents([text], task.splitter, bos=False), task.config.data.seq_bytes,
                             task.config.data.seq_words)
  assert len(rows) == 1 and rows[0]["bytes"][0] == text[0]
  _, metrics = jax.jit(task.loss)(params, {k: v[None] for k, v in rows[0].items()}, jax.random.key(0))
  predicted = len(text) + 1 - scorer.unscored_bytes(text)  # the text's bytes and EOD, less the unscored
  np.testing.assert_allclose(-scorer.log_probs(text, end_of_document=True).sum(),
                             float(metrics["bits_per_byte"]) * math.log(2) * predicted, rtol=1e-5)


def test_bits_per_byte_without_bos_divides_by_the_scored_bytes(no_bos, tmp_path):
  _, _, _, scorer = no_bos
  result = score.bits_per_byte(scorer, SAMPLE_TEXT)
  with open(SAMPLE_TEXT, "rb") as f:
    data = f.read()
  scored = len(data) - scorer.unscored_bytes(data)
  assert result["bytes"] == scored < len(data)
  np.testing.assert_allclose(result["nll_bits"], -scorer.log_probs(data).sum() / math.log(2), rtol=1e-12)
  np.testing.assert_allclose(result["bits_per_byte"], result["nll_bits"] / scored, rtol=1e-12)
  (tmp_path / "one.txt").write_bytes(b"a")
  with pytest.raises(score.ScoreInputError, match="none of which can be scored without a BOS byte"):
    score.bits_per_byte(scorer, tmp_path / "one.txt")


def test_multiple_choice_equals_a_hand_count(model):
  """acc / acc_norm on the shipped items, against a count by hand: each choice scored alone, as the
  sum of the log-probs at the choice's byte positions in the joint text `context + choice`."""
  _, _, _, scorer = model
  with open(SAMPLE_CHOICES) as f:
    items = [json.loads(line) for line in f]
  assert len(items) == 8
  acc = acc_norm = 0
  for item in items:
    lls, lengths = [], []
    for choice in item["choices"]:
      joint = (item["context"] + choice).encode()
      lls.append(scorer.log_probs(joint)[len(item["context"].encode()):].sum())
      lengths.append(len(choice.encode()))
    acc += int(np.argmax(lls)) == item["label"]
    acc_norm += int(np.argmax(np.array(lls) / np.array(lengths))) == item["label"]
  result = score.multiple_choice(scorer, SAMPLE_CHOICES)
  assert result == {"acc": acc / len(items), "acc_norm": acc_norm / len(items), "items": len(items)}


@pytest.mark.parametrize("line, message", [
    ("not json", r"bad.jsonl:2: not valid JSON"),
    ('["context", "choices"]', r"bad.jsonl:2: expected an object"),
    ('{"context": "a", "choices": [" b"]}', r"bad.jsonl:2: missing key\(s\) \['label'\]"),
    ('{"context": 3, "choices": [" b"], "label": 0}', r"bad.jsonl:2: context must be a string"),
    ('{"context": "a", "choices": [], "label": 0}', r"bad.jsonl:2: choices must be a non-empty list"),
    ('{"context": "a", "choices": [" b", ""], "label": 0}', r"bad.jsonl:2: choice 1 is ''"),
    ('{"context": "a", "choices": [" b", " c"], "label": 2}',
     r"bad.jsonl:2: label must be an int index into the 2 choices \(0..1\), got 2"),
    ('{"context": "a", "choices": [" b"], "label": true}', r"bad.jsonl:2: label must be an int"),
    ('{"context": "\\ud800", "choices": [" b"], "label": 0}', r"bad.jsonl:2: text is not encodable as UTF-8"),
])
def test_malformed_choices_name_the_line(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"context": "a", "choices": [" b", " c"], "label": 1}\n' + line + "\n")
  with pytest.raises(score.ScoreInputError, match=message):
    score.read_choices(path)


def test_scoring_refuses_what_it_cannot_score():
  config = make_config("tfree")
  task = registry.make_task(config)
  with pytest.raises(ValueError, match=r"context_fraction .* in \[0, 1\); got 1.0"):
    score.Scorer(task, {}, context_fraction=1.0)
  with pytest.raises(ValueError, match="not a byte-level LM task"):
    score.Scorer(object(), {})


@pytest.mark.integration
def test_score_mode_end_to_end_on_a_trained_checkpoint(tmp_path):
  """Train 2 steps, then `python -m hat_jax.main --mode=score`: it restores that checkpoint and prints the
  numbers the library gives for its params; bad input is an ERROR line naming the file and line."""
  config = make_config("bytes")  # the CLI path is the same for every task; the byte baseline compiles fastest
  config.train.steps, config.train.eval_every = 2, 2
  workdir = str(tmp_path / "run")
  trainer.train(config, workdir, devices=jax.devices()[:1])  # batch 4 does not divide 8 devices; one is enough

  def cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")]),
           "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "hat_jax.main", "--config=configs/bytes.py:size=test,corpus=toy",
                           "--config.train.steps=2", "--config.train.eval_every=2", f"--workdir={workdir}",
                           "--mode=score", *args], cwd=_ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)

  proc = cli(f"--score_text={SAMPLE_TEXT}", f"--score_choices={SAMPLE_CHOICES}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  line, = [x for x in proc.stdout.splitlines() if x.startswith("score: ")]
  printed = {k: float(v) for k, v in (kv.split("=") for kv in line[len("score: "):].split())}
  assert set(printed) == {"step", "text/bits_per_byte", "text/bytes", "text/nll_bits", "choices/acc",
                          "choices/acc_norm", "choices/items"}
  assert printed["step"] == 2 and printed["text/bytes"] == 1118 and printed["choices/items"] == 8

  _, params, _ = trainer.restore_params(config, workdir, devices=jax.devices()[:1])
  scorer = score.Scorer(registry.make_task(config), params, batch_size=8)
  assert printed["text/bits_per_byte"] == pytest.approx(score.bits_per_byte(scorer, SAMPLE_TEXT)["bits_per_byte"],
                                                        rel=1e-5)
  mc = score.multiple_choice(scorer, SAMPLE_CHOICES)
  assert (printed["choices/acc"], printed["choices/acc_norm"]) == pytest.approx((mc["acc"], mc["acc_norm"]), rel=1e-5)

  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"context": "a", "choices": [" b"], "label": 1}\n')
  proc = cli(f"--score_choices={bad}")
  assert proc.returncode == 1 and f"ERROR: {bad}:1: label must be an int index" in proc.stderr
