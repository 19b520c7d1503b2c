"""Batched HAT generation with KV caches at all three levels (encoder bytes, backbone words, decoder bytes).

  prefill   everything but the last, possibly unfinished, word of each prompt: encoder and decoder over
            all prompt bytes, backbone over the complete words.
  per byte  sample from the decoder's logits; ask the splitter whether the new byte starts a new word.
            If it does, pool the finished word's encoder states into a word embedding and take one
            backbone step (only for the sequences whose word finished); its output guides the next word.
            Then the new byte goes through the encoder and the decoder (one cached step each).

A word boundary is sometimes only visible a few bytes late (a multi-byte UTF-8 character that turns out
to start a new word, or a word cut at `max_word_bytes` inside a character). Those k-1 bytes were decoded
with the old word's guide, so the decoder cache is rolled back by k-1 entries and they are decoded again
with the new guide: the final logits then equal a full uncached forward pass over the generated text with
the same word boundaries (tested). The encoder never depends on word boundaries, so its cache stays.

The loop is Python (the splitter runs on the host) around three jitted functions with fixed shapes.

Prompts are framed as training frames documents (`prompt_words`): BOS + prompt, or with `bos=False`
(`data.bos`, the released TFree-HAT framing) the prompt alone, which then must not be empty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hat_jax.data.batching import stack_prompts
from hat_jax.data.pipeline import document_start
from hat_jax.data.splitter import BOS, END_OF_WORD, EOD, WordSplitter
from hat_jax.generate.sampling import SamplingConfig, sample
from hat_jax.models.hat import HAT, HATConfig, empty_caches
from hat_jax.models.layers import crop_caches, empty_caches as stack_caches


@dataclasses.dataclass
class Generation:
  """Result for one prompt."""

  prompt: bytes
  generated: bytes
  words: list[bytes]  # word segmentation used by the backbone, BOS word first if any (prompt + generated)
  logits: np.ndarray | None = None  # [len([BOS] + prompt + generated) - 1, 256] next-byte logits, if recorded

  @property
  def text(self) -> str:
    return self.generated.decode("utf-8", errors="replace")


def prompt_words(splitter: WordSplitter, prompt: bytes, bos: bool = True) -> list[bytes]:
  """The words a document whose text starts with `prompt` begins with, as `pipeline.encode_documents`
  frames it: the BOS word, then the prompt's words; with `bos=False` the prompt's words alone (an empty
  prompt is then a ValueError, `pipeline.document_start`)."""
  document_start(prompt, bos)  # checks
  return ([bytes([BOS])] if bos else []) + splitter.split(bytes(prompt))


def framed_prompts(splitter: WordSplitter, prompts: Sequence[bytes], bos: bool, max_new_bytes: int,
                   max_total_bytes: int) -> tuple[list[list[bytes]], list[bytes], int]:
  """Each prompt's words (`prompt_words`) and bytes (the words joined: a special token's text is its one
  byte), and the byte budget `total` = longest prompt + max_new_bytes, checked against max_total_bytes."""
  if not prompts:
    raise ValueError("generate needs at least one prompt.")
  words = [prompt_words(splitter, p, bos) for p in prompts]
  seqs = [b"".join(w) for w in words]
  total = max(len(s) for s in seqs) + max_new_bytes
  if total > max_total_bytes:
    raise ValueError(f"prompt + max_new_bytes = {total} bytes exceeds max_total_bytes={max_total_bytes}; "
                     "shorten the prompt or raise max_total_bytes.")
  return words, seqs, total


def paper_prompts(splitter: WordSplitter, prompts: Sequence[bytes], bos: bool, max_new_bytes: int,
                  max_total_words: int) -> tuple[list[list[bytes]], list[bytes]]:
  """The paper design's start state per prompt: (complete words, the word being written). The prompt's
  last word may go on, unless it is the first: that design never predicts a document's first word.
  Checks the word budget (complete words + max_new_bytes + 1 <= max_total_words)."""
  if not prompts:
    raise ValueError("generate needs at least one prompt.")
  words = [prompt_words(splitter, p, bos) for p in prompts]
  complete = [w[:-1] if len(w) > 1 else w for w in words]
  current = [w[-1] if len(w) > 1 else b"" for w in words]
  if max(len(c) for c in complete) + max_new_bytes + 1 > max_total_words:
    raise ValueError(f"prompt words + max_new_bytes exceed max_total_words={max_total_words}; raise it.")
  return complete, current


def word_arrays(words: list[list[bytes]], max_word_bytes: int):
  """The paper encoder's input: ids int32 [B, W, M], byte mask bool [B, W, M], word valid bool [B, W]."""
  n = max(1, max(len(w) for w in words))
  ids = np.zeros((len(words), n, max_word_bytes), np.int32)
  mask = np.zeros((len(words), n, max_word_bytes), bool)
  for b, ws in enumerate(words):
    for j, w in enumerate(ws):
      ids[b, j, :len(w)] = np.frombuffer(w, np.uint8)
      mask[b, j, :len(w)] = True
  return ids, mask, mask.any(-1)


def _check_sampler_inputs(cfg: HATConfig, splitter: WordSplitter, variants: tuple[str, ...], other: str) -> None:
  if cfg.variant not in variants:
    raise ValueError(f"this sampler is for variant {' or '.join(map(repr, variants))}, the model is "
                     f"{cfg.variant!r}; use {other}.")
  if splitter.max_word_bytes != cfg.max_word_bytes:
    raise ValueError(f"splitter.max_word_bytes ({splitter.max_word_bytes}) must match the model's "
                     f"max_word_bytes ({cfg.max_word_bytes}).")


class HATSampler:
  """Generates bytes from a trained tfree or released HAT. `params` are the model's variables ({'params': ...});
  `bos`: prompts start with the BOS word (`data.bos`; False for converted released models)."""

  def __init__(self, cfg: HATConfig, params, splitter: WordSplitter, max_total_bytes: int = 512, bos: bool = True):
    _check_sampler_inputs(cfg, splitter, ("tfree", "released"), "PaperHATSampler")
    # On the device once: host (numpy) params would be sent again with every jitted call.
    self.cfg, self.splitter, self.max_total, self.bos = cfg, splitter, max_total_bytes, bos
    self.params = jax.device_put(params)
    self.model = HAT(cfg)
    model = self.model

    def encode(params, byte_ids, pos, seg, caches):
      return model.apply(params, byte_ids, pos, seg, caches, method=HAT.encode)

    def backbone_step(params, h_hist, starts, lengths, word_pos, valid, caches):
      byte_pos = jnp.broadcast_to(jnp.arange(h_hist.shape[1]), h_hist.shape[:2])  # h_hist holds bytes 0..total-1
      emb = model.apply(params, h_hist, starts, lengths, byte_pos, word_pos, method=HAT.pool_words)  # [B, W, D]
      out, caches = model.apply(params, emb, word_pos, valid.astype(jnp.int32), caches, method=HAT.backbone)
      return out, caches

    def decode(params, h, guide, pos, seg, caches):
      return model.apply(params, h, guide, pos, seg, caches, method=HAT.decode)

    def byte_step(params, new, lens, active, redo, guide_idx, guides, h_hist, enc_caches, dec_caches, width):
      """Encode the new byte, then re-decode the last `redo` bytes (the new one included) of each sequence,
      each with the guide `guides[:, guide_idx]`, after rolling the decoder cache back over them."""
      batch = new.shape[0]
      h_new, enc_caches = encode(params, new[:, None], (lens - 1)[:, None], active[:, None].astype(jnp.int32),
                                 enc_caches)
      h_hist = h_hist.at[jnp.arange(batch), lens - 1].set(h_new[:, 0])
      chunk_seg = (jnp.arange(width)[None] < redo[:, None]).astype(jnp.int32)
      chunk_pos = jnp.where(chunk_seg > 0, (lens - redo)[:, None] + jnp.arange(width)[None], 0)
      h_chunk = jnp.take_along_axis(h_hist, chunk_pos[..., None], axis=1)
      guide = jnp.take_along_axis(guides, guide_idx[..., None], axis=1)
      dec_caches = crop_caches(dec_caches, jnp.maximum(redo - 1, 0))
      logits, dec_caches = decode(params, h_chunk, guide, chunk_pos, chunk_seg, dec_caches)
      return logits, h_hist, enc_caches, dec_caches

    self._encode = jax.jit(encode)
    self._backbone = jax.jit(backbone_step)
    self._decode = jax.jit(decode)
    self._byte_step = jax.jit(byte_step, static_argnames="width")
    self._first_word = model.apply(params, method=HAT.first_word_embedding)

  def generate(self, prompts: Sequence[bytes], max_new_bytes: int, rng: jax.Array,
               sampling: SamplingConfig = SamplingConfig(), record_logits: bool = False,
               stop_at_eod: bool = True) -> list[Generation]:
    cfg, params, splitter = self.cfg, self.params, self.splitter
    batch = len(prompts)
    words, seqs, total = framed_prompts(splitter, prompts, self.bos, max_new_bytes, self.max_total)
    seqs = [bytearray(s) for s in seqs]
    prompt_len = [len(s) for s in seqs]
    # Prompt words that end with an unfinished UTF-8 character stay "current" like any last word.
    complete = [w[:-1] for w in words]
    # Slack for the widest re-decode chunk: a write that overran the buffer would be clamped, not dropped.
    caches = empty_caches(cfg, batch, total + cfg.max_word_bytes + 1, total)
    d_enc = cfg.encoder.d_model

    # ---- prefill ----
    byte_ids, lens = stack_prompts(seqs, 0)  # the fill is masked: segment id 0
    p_len = byte_ids.shape[1]
    seg = (np.arange(p_len)[None] < lens[:, None]).astype(np.int32)
    pos = np.broadcast_to(np.arange(p_len, dtype=np.int32), (batch, p_len))
    h, caches["encoder"] = self._encode(params, byte_ids, pos, seg, caches["encoder"])
    h_hist = jnp.zeros((batch, total, d_enc), h.dtype).at[:, :p_len].set(h)

    n_words = max(1, max(len(c) for c in complete))
    starts = np.zeros((batch, n_words), np.int32)
    lengths = np.zeros((batch, n_words), np.int32)
    for b, ws in enumerate(complete):
      offs = np.cumsum([0] + [len(w) for w in ws])
      starts[b, :len(ws)], lengths[b, :len(ws)] = offs[:-1], [len(w) for w in ws]
    word_pos = np.broadcast_to(np.arange(n_words, dtype=np.int32), (batch, n_words))
    out, caches["backbone"] = self._backbone(params, h_hist, starts, lengths, word_pos, lengths > 0,
                                             caches["backbone"])
    # Guide of each prompt word: backbone output of the previous word (first word: learned embedding).
    first = jnp.broadcast_to(self._first_word, (batch, 1, out.shape[-1])).astype(out.dtype)
    guide_words = jnp.concatenate([first, out], axis=1)  # guide_words[:, j] guides word j
    byte_word = np.zeros((batch, p_len), np.int32)
    for b, ws in enumerate(words):
      byte_word[b, :len(seqs[b])] = np.repeat(np.arange(len(ws)), [len(w) for w in ws])
    guide = jnp.take_along_axis(guide_words, jnp.asarray(byte_word)[..., None], axis=1)
    logits, caches["decoder"] = self._decode(params, h, guide, pos, seg, caches["decoder"])
    last = np.array([len(s) - 1 for s in seqs])
    next_logits = logits[np.arange(batch), last]  # [B, 256]
    current_guide = guide_words[np.arange(batch), np.array([len(c) for c in complete])]  # [B, D]
    recorded = [list(np.asarray(logits[b, :len(seqs[b])])) for b in range(batch)] if record_logits else None

    cur_start = np.array([len(s) - len(ws[-1]) for s, ws in zip(seqs, words)])
    cur_word_pos = np.array([len(c) for c in complete], np.int32)
    done = np.zeros(batch, bool)

    # ---- byte loop ----
    for _ in range(max_new_bytes):
      rng, key = jax.random.split(rng)
      new = np.asarray(sample(next_logits, key, sampling))
      active = ~done
      splits = [splitter.finish_words(bytes(seqs[b][cur_start[b]:]), int(new[b])) if active[b] else [b""]
                for b in range(batch)]
      n_finished = np.array([len(w) - 1 for w in splits])
      # One backbone step per finished word (only for the sequences that finished that many words);
      # guides[i] is what guides word i of the split (guides[0]: the current guide).
      guides = [current_guide]
      for i in range(int(n_finished.max())):
        has = n_finished > i
        length = np.array([len(w[i]) if h else 0 for w, h in zip(splits, has)], np.int32)
        out, caches["backbone"] = self._backbone(
            params, h_hist, cur_start[:, None].astype(np.int32), length[:, None],
            cur_word_pos[:, None].astype(np.int32), has[:, None], caches["backbone"])
        guides.append(jnp.where(has[:, None], out[:, 0], guides[-1]))
        cur_start = cur_start + length
        cur_word_pos = cur_word_pos + has
      current_guide = guides[-1]
      for b in np.flatnonzero(active):
        seqs[b].append(int(new[b]))
      lens = np.array([len(s) for s in seqs], np.int32)
      # Bytes after the first finished word were decoded with a stale guide: the decoder is rolled back
      # over them and they are decoded again, each with its own word's guide, together with the new byte.
      redo = np.where(active, 1, 0).astype(np.int32)
      guide_idx = np.zeros((batch, cfg.max_word_bytes + 1), np.int32)  # index into `guides` per re-decoded byte
      for b in np.flatnonzero(n_finished > 0):
        per_byte = np.repeat(np.arange(1, len(splits[b])), [len(x) for x in splits[b][1:]])
        redo[b] = len(per_byte)
        guide_idx[b, :len(per_byte)] = per_byte
      width = 1 if redo.max() <= 1 else cfg.max_word_bytes + 1  # two compiled shapes only
      slots = cfg.max_word_bytes + 2  # fixed number of guide slots, so `guides` has one shape
      stacked = jnp.stack(guides + [guides[-1]] * (slots - len(guides)), axis=1)  # [B, slots, D]
      logits, h_hist, caches["encoder"], caches["decoder"] = self._byte_step(
          params, new.astype(np.int32), lens, active, redo, guide_idx[:, :width], stacked, h_hist,
          caches["encoder"], caches["decoder"], width=width)
      next_logits = logits[np.arange(batch), np.maximum(redo - 1, 0)]
      if record_logits:
        for b in np.flatnonzero(active):
          del recorded[b][len(recorded[b]) - (redo[b] - 1):]
          recorded[b].extend(np.asarray(logits[b, :redo[b]]))
      if stop_at_eod:
        done |= active & (new == EOD)
      if done.all():
        break

    results = []
    for b, prompt in enumerate(prompts):
      full = bytes(seqs[b])
      boundaries = self._boundaries(full, words[b])
      results.append(Generation(
          prompt=bytes(prompt), generated=full[prompt_len[b]:], words=boundaries,
          logits=None if recorded is None else np.stack(recorded[b][:len(full) - 1]) if len(full) > 1 else None))
    return results

  def _boundaries(self, full: bytes, prompt_words: list[bytes]) -> list[bytes]:
    """Replays the generation's word decisions to report the segmentation the backbone saw."""
    words, cur = list(prompt_words[:-1]), prompt_words[-1]
    for byte in full[sum(len(w) for w in prompt_words):]:
      *finished, cur = self.splitter.finish_words(cur, byte)
      words += finished
    return words + [cur]


class PaperHATSampler:
  """Generation for the paper's HAT design (`variant="paper"`): the backbone runs with a KV cache over
  words; the decoder spells each word from its predictive vector until it predicts [W] (or the word
  reaches max_word_bytes); the finished word is encoded and takes one backbone step. Words are short,
  so the decoder recomputes its (at most max_word_bytes + 1) positions per byte instead of caching.

  `bos` as in `HATSampler`. The paper design never predicts a document's first word (no word before it),
  so without BOS a one-word prompt counts as finished: generation starts with the next word."""

  def __init__(self, cfg: HATConfig, params, splitter: WordSplitter, max_total_words: int = 256, bos: bool = True):
    from hat_jax.models.hat import PaperHAT

    _check_sampler_inputs(cfg, splitter, ("paper",), "HATSampler")
    self.cfg, self.splitter, self.max_words, self.bos = cfg, splitter, max_total_words, bos
    self.params = jax.device_put(params)  # once, as above
    model = PaperHAT(cfg)

    def word_step(params, byte_ids, byte_mask, word_pos, valid, caches):
      emb = model.apply(params, byte_ids, byte_mask, method=PaperHAT.encode_words)  # [B, W, D]
      return model.apply(params, emb, word_pos, valid.astype(jnp.int32), caches, method=PaperHAT.backbone)

    self._word_step = jax.jit(word_step)
    self._decode = jax.jit(lambda params, prev, ids: model.apply(params, prev, ids, method=PaperHAT.decode_words))

  def generate(self, prompts: Sequence[bytes], max_new_bytes: int, rng: jax.Array,
               sampling: SamplingConfig = SamplingConfig(), stop_at_eod: bool = True) -> list[Generation]:
    cfg, m = self.cfg, self.cfg.max_word_bytes
    complete, current = paper_prompts(self.splitter, prompts, self.bos, max_new_bytes, self.max_words)
    current = [bytearray(c) for c in current]
    batch = len(prompts)
    caches = stack_caches(cfg.backbone, batch, self.max_words, cfg.jnp_dtype)
    ids, mask, valid = word_arrays(complete, m)
    pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), valid.shape)
    out, caches = self._word_step(self.params, ids, mask, pos, valid, caches)
    lens = np.array([len(c) for c in complete])
    prev = out[np.arange(batch), lens - 1]  # [B, D] predictive vector of the word being written
    generated = [bytearray() for _ in prompts]
    done = np.zeros(batch, bool)
    for _ in range(max_new_bytes):
      cur = np.zeros((batch, 1, m), np.int32)
      for b, c in enumerate(current):
        cur[b, 0, :len(c)] = np.frombuffer(bytes(c), np.uint8)
      logits = self._decode(self.params, prev[:, None], cur)[:, 0]  # [B, M+1, 256]
      at = np.array([len(c) for c in current])
      rng, key = jax.random.split(rng)
      new = np.asarray(sample(logits[np.arange(batch), at], key, sampling))
      finished = np.zeros(batch, bool)
      for b in np.flatnonzero(~done):
        if new[b] == END_OF_WORD or len(current[b]) == m:
          finished[b] = len(current[b]) > 0  # an empty word cannot end
          if finished[b] or new[b] == END_OF_WORD:
            continue
        current[b].append(int(new[b]))
        generated[b].append(int(new[b]))
        done[b] |= stop_at_eod and new[b] == EOD
      if finished.any():
        ids, mask, _ = word_arrays([[bytes(c)] for c in current], m)
        step_pos = np.array([len(c) for c in complete], np.int32)[:, None]
        out, caches = self._word_step(self.params, ids, mask, step_pos, finished[:, None], caches)
        prev = jnp.where(finished[:, None], out[:, 0], prev)
        for b in np.flatnonzero(finished):
          complete[b].append(bytes(current[b]))
          current[b] = bytearray()
      if done.all():
        break
    return [Generation(prompt=bytes(p), generated=bytes(g),
                       words=complete[b] + ([bytes(current[b])] if current[b] else []))
            for b, (p, g) in enumerate(zip(prompts, generated))]
