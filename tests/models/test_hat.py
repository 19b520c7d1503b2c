import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax.data import pipeline
from hat_jax.data.splitter import BOS, WordSplitter
from hat_jax.generate.hat_sampler import HATSampler
from hat_jax.generate.sampling import GREEDY, SamplingConfig
from hat_jax import losses
from hat_jax.models.hat import HAT, HATConfig, build_hat, byte_owner, pool_words_softmax
from hat_jax.models.layers import StackConfig
from tests import jit_helpers

M = 8


def stack(d, window=6, layers=1):
  return StackConfig(d_model=d, num_layers=layers, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=48, window=window)


def hat_cfg(variant="tfree"):
  return HATConfig(stack(32, layers=2), stack(64, None), stack(32, layers=2), M, variant=variant, pool_heads=2)


def packed_batch(docs=(b"Hello, world! The cat sat.", "K\u00e4se und Brot.".encode(), b"ok")):
  rows = pipeline.PackedRows(pipeline.encode_documents(list(docs), WordSplitter(max_word_bytes=M)), 48, 16)
  return {k: jnp.asarray(v) for k, v in pipeline.eval_batches(rows, 1, 1)[0].items()}


def single_doc_batch(full: bytes, words: list[bytes]):
  lens = [len(w) for w in words]
  return dict(
      bytes=jnp.array([list(full)]), positions=jnp.arange(len(full))[None], segment_ids=jnp.ones((1, len(full)), jnp.int32),
      word_ids=jnp.array([np.repeat(np.arange(len(words)), lens)]), word_starts=jnp.array([np.cumsum([0] + lens)[:-1]]),
      word_lengths=jnp.array([lens]), word_positions=jnp.arange(len(words))[None],
      word_segment_ids=jnp.ones((1, len(words)), jnp.int32))


@pytest.mark.parametrize("variant", ["tfree", "paper"])
def test_loss_and_metrics_finite_and_learnable(variant):
  model, batch = build_hat(hat_cfg(variant)), packed_batch()
  params = jit_helpers.init(model, jax.random.key(0), batch, method=model.loss_and_metrics)
  loss_fn = lambda p: model.apply(p, batch, method=model.loss_and_metrics)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert np.isfinite(float(loss)) and set(metrics) >= {"bits_per_byte", "word_accuracy", "byte_accuracy"}
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  # a few SGD steps on one batch reduce the loss
  sgd = jax.jit(lambda p: jax.tree.map(lambda w, g: w - 0.05 * g, p, jax.grad(lambda q: loss_fn(q)[0])(p)))
  for _ in range(5):
    params = sgd(params)
  assert float(jax.jit(loss_fn)(params)[0]) < float(loss)


def test_logits_shape_and_causality_within_words():
  model, batch = HAT(hat_cfg()), packed_batch()
  params = jit_helpers.init(model, jax.random.key(0), batch)
  logits = jit_helpers.apply(model, params, batch)
  assert logits.shape == (1, 48, 256)
  # Changing bytes after t (keeping the word segmentation) must not change logits at <= t.
  t = 10
  changed = dict(batch, bytes=batch["bytes"].at[0, t + 1:].set(ord("q")))
  np.testing.assert_allclose(jit_helpers.apply(model, params, changed)[0, :t + 1], logits[0, :t + 1], atol=1e-5)
  assert not np.allclose(jit_helpers.apply(model, params, changed)[0, t + 1:], logits[0, t + 1:])


def test_documents_do_not_leak():
  model = HAT(hat_cfg())
  a = packed_batch([b"First document here.", b"Second one."])
  b = packed_batch([b"Other document here.", b"Second one."])
  assert (a["segment_ids"] == b["segment_ids"]).all()
  params = jit_helpers.init(model, jax.random.key(0), a)
  second = np.asarray(a["segment_ids"][0] == 2)
  np.testing.assert_allclose(jit_helpers.apply(model, params, a)[0][second], jit_helpers.apply(model, params, b)[0][second], atol=1e-5)


def test_word_accuracy_counts_whole_words():
  # targets: bytes 1..5 of a 6-byte row with words [0], [1,2], [3,4,5]
  batch = dict(word_ids=jnp.array([[0, 1, 1, 2, 2, 2]]), word_lengths=jnp.array([[1, 2, 3]]),
               targets=jnp.array([[1, 2, 3, 4, 5, 0]]), loss_mask=jnp.array([[1, 1, 1, 1, 1, 0]], jnp.float32))
  logits = jax.nn.one_hot(jnp.array([[1, 2, 3, 9, 5, 0]]), 256) * 10  # one wrong byte in word 2
  _, m = losses.next_byte_metrics(logits, batch)
  assert float(m["word_accuracy"]) == pytest.approx(0.5)  # word 1 right, word 2 wrong; word 0 never predicted
  assert float(m["byte_accuracy"]) == pytest.approx(0.8)


@pytest.mark.parametrize("bos", [True, False])  # False: documents `text [EOD]` (data.bos, released framing)
def test_cached_generation_equals_uncached_forward(bos):
  seed, prompts = 3, [b"Hello wo", b"caf\xc3", b"" if bos else b"a", "Gr\u00fc\u00df dich".encode()]
  cfg = hat_cfg()
  model = HAT(cfg)
  splitter = WordSplitter(max_word_bytes=M)
  init_bytes = bytes([BOS]) + b"Hello"
  params = jit_helpers.init(model, jax.random.key(0), single_doc_batch(init_bytes, [init_bytes[:1], init_bytes[1:]]))
  sampler = HATSampler(cfg, params, splitter, max_total_bytes=96, bos=bos)
  # Sampling random bytes at temperature 1 from an untrained model exercises invalid UTF-8, multi-byte
  # characters and words finished several bytes late.
  gens = sampler.generate(prompts, 24, jax.random.key(seed), SamplingConfig(temperature=1.0), record_logits=True,
                          stop_at_eod=False)
  for g in gens:
    full = bytes([BOS] if bos else []) + g.prompt + g.generated
    assert b"".join(g.words) == full and len(g.generated) == 24
    assert (g.words[0] == bytes([BOS])) == bos  # without BOS the first word is the prompt's
    ref = jit_helpers.apply(model, params, single_doc_batch(full, g.words))[0, :len(full) - 1]
    np.testing.assert_allclose(g.logits, ref, atol=1e-4)


@pytest.mark.slow  # ~20 s of sampler compiles; cached == uncached stays in the default run
def test_greedy_generation_is_deterministic_and_batched_equals_single():
  cfg = hat_cfg()
  model = HAT(cfg)
  init_bytes = bytes([BOS]) + b"Hello"
  params = jit_helpers.init(model, jax.random.key(1), single_doc_batch(init_bytes, [init_bytes[:1], init_bytes[1:]]))
  sampler = HATSampler(cfg, params, WordSplitter(max_word_bytes=M), max_total_bytes=64)
  both = sampler.generate([b"The cat", b"A dog ran"], 12, jax.random.key(0), GREEDY)
  alone = sampler.generate([b"A dog ran"], 12, jax.random.key(9), GREEDY)
  assert both[1].generated == alone[0].generated


def test_sampler_rejects_bad_requests():
  cfg = hat_cfg()
  params = jit_helpers.init(HAT(cfg), jax.random.key(0), packed_batch())
  with pytest.raises(ValueError, match="max_word_bytes"):
    HATSampler(cfg, params, WordSplitter(max_word_bytes=M + 1))
  sampler = HATSampler(cfg, params, WordSplitter(max_word_bytes=M), max_total_bytes=16)
  with pytest.raises(ValueError, match="exceeds max_total_bytes"):
    sampler.generate([b"long prompt"], 10, jax.random.key(0))
  with pytest.raises(ValueError, match="at least one prompt"):
    sampler.generate([], 10, jax.random.key(0))
  no_bos = HATSampler(cfg, params, WordSplitter(max_word_bytes=M), max_total_bytes=16, bos=False)
  with pytest.raises(ValueError, match=r"empty prompt has nothing to condition on .*pass at least the text's first"):
    no_bos.generate([b"ok", b""], 4, jax.random.key(0))
  from hat_jax.generate.hat_sampler import PaperHATSampler, prompt_words
  paper = PaperHATSampler(hat_cfg("paper"), {}, WordSplitter(max_word_bytes=M), bos=False)  # fails before params
  with pytest.raises(ValueError, match="empty prompt has nothing to condition on"):
    paper.generate([b""], 4, jax.random.key(0))
  assert prompt_words(WordSplitter(max_word_bytes=M), b"Hi you", bos=False) == [b"Hi", b" you"]
  assert prompt_words(WordSplitter(max_word_bytes=M), b"", bos=True) == [bytes([BOS])]


@pytest.mark.parametrize("change, match", [
    (dict(decoder=stack(48)), "must equal model.decoder.d_model"),
    (dict(variant="megabyte"), "variant"),
    (dict(pool_heads=3), "divisible"),
])
def test_bad_hat_config(change, match):
  base = dict(encoder=stack(32), backbone=stack(64), decoder=stack(32), max_word_bytes=M, pool_heads=2)
  with pytest.raises(ValueError, match=match):
    HATConfig(**(base | change))


def test_unknown_config_field_is_an_error():
  import ml_collections
  cfg = ml_collections.ConfigDict(dict(encoder=dict(stack(32).__dict__), backbone=dict(stack(64).__dict__),
                                       decoder=dict(stack(32).__dict__), pool_head=2))
  with pytest.raises(ValueError, match="Unknown HAT model config fields"):
    HATConfig.from_config(cfg, M)


@pytest.mark.slow  # ~25 s of sampler compiles
@pytest.mark.parametrize("bos", [True, False])
def test_paper_variant_sampler_follows_its_own_uncached_forward(bos):
  from hat_jax.generate.hat_sampler import PaperHATSampler
  from hat_jax.data.splitter import END_OF_WORD
  cfg = hat_cfg("paper")
  model = build_hat(cfg)
  params = jit_helpers.init(model, jax.random.key(2), packed_batch(), method=model.loss_and_metrics)
  sampler = PaperHATSampler(cfg, params, WordSplitter(max_word_bytes=M), max_total_words=64, bos=bos)
  gen = sampler.generate([b"The cat sat"], 30, jax.random.key(0), GREEDY, stop_at_eod=False)[0]
  assert gen.generated and b"".join(gen.words) == bytes([BOS] if bos else []) + b"The cat sat" + gen.generated
  full = b"".join(gen.words)
  logits, _, _ = jit_helpers.apply(model, params, single_doc_batch(full, gen.words))
  # words: [BOS], "The", " cat", " sat..." (a prompt word the decoder went on with), then generated words.
  generated_words = range(3 + bos, len(gen.words) - 1)  # the last word may be unfinished
  assert len(generated_words) >= 2
  for j in generated_words:  # each is the greedy spelling under the uncached forward pass, ending with [W]
    word, expected = gen.words[j], np.argmax(np.asarray(logits[0, j]), -1)
    assert list(word) == expected[:len(word)].tolist()
    if len(word) < M:
      assert expected[len(word)] == END_OF_WORD


def test_paper_cached_decoder_equals_decode_words_across_a_word_reset():
  """The paper engine's decoder: `decode_cached` step by step (and a prefilled chunk) gives `decode_words`'
  rows, and after `reset_caches` at a word end the next word's steps see only that word."""
  from hat_jax.models.hat import PaperHAT
  from hat_jax.models.layers import empty_caches, reset_caches
  cfg = hat_cfg("paper")
  model = build_hat(cfg)
  params = jit_helpers.init(model, jax.random.key(2), packed_batch(), method=model.loss_and_metrics)
  ks = jax.random.split(jax.random.key(3), 4)
  prev = jax.random.normal(ks[0], (2, 2, cfg.backbone.d_model))  # [B, W=2 words, D]
  words = jax.random.randint(ks[1], (2, 2, M), 0, 256)
  want = model.apply(params, prev, words, method=PaperHAT.decode_words)  # [B, 2, M+1, 256]
  apply = jax.jit(lambda *a: model.apply(params, *a, method=PaperHAT.decode_cached))
  caches = empty_caches(cfg.decoder, 2, M + 1, jnp.float32)
  # Word 0: the first 3 positions as one prefilled chunk, then one position per step.
  inputs = model.apply(params, prev[:, 0, None], words[:, 0], method=PaperHAT.decoder_inputs)  # [B, M+1, d]
  got, caches = apply(inputs[:, :3], jnp.broadcast_to(jnp.arange(3), (2, 3)), jnp.ones((2, 3), jnp.int32), caches)
  rows = [got]
  for k in range(3, M + 1):
    step, caches = apply(inputs[:, k:k + 1], jnp.full((2, 1), k), jnp.ones((2, 1), jnp.int32), caches)
    rows.append(step)
  np.testing.assert_allclose(jnp.concatenate(rows, 1), want[:, 0], atol=1e-4, rtol=1e-4)
  # Word 1 after emptying both rows' caches.
  caches = reset_caches(caches, jnp.array([True, True]))
  inputs = model.apply(params, prev[:, 1, None], words[:, 1], method=PaperHAT.decoder_inputs)
  for k in range(M + 1):
    step, caches = apply(inputs[:, k:k + 1], jnp.full((2, 1), k), jnp.ones((2, 1), jnp.int32), caches)
    np.testing.assert_allclose(step[:, 0], want[:, 1, k], atol=1e-4, rtol=1e-4)


# -- the word pool: linear segment softmax against the dense [B, S, W] formulation ------------------------


def _dense_pool(scores, values, starts, lengths):
  """The quadratic oracle: a [B, S, W] membership mask and a masked softmax over the byte axis."""
  t = jnp.arange(scores.shape[1])[None, :, None]
  member = (t >= starts[:, None, :]) & (t < (starts + lengths)[:, None, :])  # [B, S, W]
  masked = jnp.where(member[..., None], scores[:, :, None, :], -jnp.inf)  # [B, S, W, H]
  word_max = jax.lax.stop_gradient(jnp.max(masked, axis=1, keepdims=True))
  weights = jnp.exp(masked - jnp.where(jnp.isfinite(word_max), word_max, 0.0))
  denom = jnp.sum(weights, axis=1)
  return jnp.einsum("bswh,bshd->bwhd", weights, values) / jnp.maximum(denom, 1e-30)[..., None]


def test_byte_owner_maps_bytes_to_their_words():
  starts = jnp.array([[0, 2, 5, 0, 0], [1, 4, 0, 0, 0]])  # row 1: byte 0 before the first word; padding words
  lengths = jnp.array([[2, 3, 1, 0, 0], [3, 2, 0, 0, 0]])
  owner, inside = byte_owner(starts, lengths, 8)
  np.testing.assert_array_equal(jnp.where(inside, owner, -1),
                                [[0, 0, 1, 1, 1, 2, -1, -1], [-1, 0, 0, 0, 1, 1, -1, -1]])


def test_segment_softmax_pool_equals_dense_values_and_grads():
  rng = np.random.default_rng(0)
  starts = jnp.array([[0, 3, 4, 9, 0, 0], [0, 5, 6, 7, 8, 10]])  # ragged words, padding words, trailing pad bytes
  lengths = jnp.array([[3, 1, 5, 2, 0, 0], [5, 1, 1, 1, 2, 2]])
  scores = jnp.asarray(rng.normal(size=(2, 12, 3)) * 4, jnp.float32)
  values = jnp.asarray(rng.normal(size=(2, 12, 3, 4)), jnp.float32)
  cot = jnp.asarray(rng.normal(size=(2, 6, 3, 4)), jnp.float32)

  def vjp(fn):
    out, pull = jax.vjp(lambda s, v: fn(s, v, starts, lengths), scores, values)
    return out, pull(cot)
  (out, grads), (want, want_grads) = jax.jit(lambda: (vjp(pool_words_softmax), vjp(_dense_pool)))()
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out[0, 4:], 0.0)  # padding words pool to zero
  for g, w in zip(grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # Linear memory: nothing of shape [B, S, W, ...] in the program.
  jaxpr = str(jax.make_jaxpr(lambda s, v: pool_words_softmax(s, v, starts, lengths))(scores, values))
  assert "2,12,6" not in jaxpr.replace(" ", "")
