"""The device engines generate what the exact host-loop samplers generate: same bytes, same word
boundaries, same logits (up to float rounding) for the same rng, greedy and sampled, ragged prompts,
multi-byte characters, words cut at max_word_bytes, invalid bytes and EOD."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from hat_jax.data.splitter import BOS, EOD, WordSplitter
from hat_jax.generate import hat_engine
from hat_jax.generate.hat_engine import HATEngine, PaperHATEngine
from hat_jax.generate.hat_sampler import HATSampler, PaperHATSampler
from hat_jax.generate.sampling import GREEDY, SamplingConfig, sample
from hat_jax.models.hat import HAT, build_hat
from tests import jit_helpers
from tests.models.test_hat import M, hat_cfg, packed_batch, single_doc_batch

PROMPTS = [b"Hello wo", b"caf\xc3", b"", "Gr\u00fc\u00df dich".encode(), b"Supercalifragilistic"]


def _params(cfg, seed=0):
  model = HAT(cfg)
  init = bytes([BOS]) + b"Hello"
  return jit_helpers.init(model, jax.random.key(seed), single_doc_batch(init, [init[:1], init[1:]]))


def _text_like(params, probs: dict[int, dict[bytes, float]]):
  """Params that write text-like bytes without training: a bigram over byte classes (0: letters, 1: space,
  2: anything else) planted on top of the random weights. Each byte's embedding gets a large component
  along its class's axis, which dominates the normed final state, and the lm head maps that axis to
  log-probabilities of the next byte; the rest of the network (backbone and guides included) still adds
  its random part."""
  p = jax.tree.map(np.array, nn.unbox(params))
  emb, head = p["params"]["byte_embed"]["embedding"], p["params"]["lm_head"]["kernel"]
  d = emb.shape[1]
  cls = np.array([0 if chr(b).isalpha() and b < 128 else 1 if b == 32 else 2 for b in range(256)])
  emb += 60.0 * np.eye(d, dtype=np.float32)[cls]
  for c, nxt in probs.items():
    logp = np.full(256, np.log(1e-4), np.float32)
    for group, mass in nxt.items():
      logp[list(group)] = np.log(mass / len(group))
    head[c] += logp / np.sqrt(d)
  return p


def _same(a, b, logits=True):
  for x, y in zip(a, b, strict=True):
    assert x.generated == y.generated
    assert x.words == y.words
    if logits:
      np.testing.assert_allclose(x.logits, y.logits, atol=1e-4)


N_NEW = 24  # one batch size (len(PROMPTS)), one length: every test reuses the fixture engine's compiled program


@pytest.fixture(scope="module")
def tfree():
  cfg = hat_cfg()
  params = _params(cfg)
  splitter = WordSplitter(max_word_bytes=M)
  return cfg, params, HATSampler(cfg, params, splitter, 128), HATEngine(cfg, params, splitter, 128)


def _with(engine, **attrs):
  """The shared engine with other params / framing (host-side attributes: no recompile)."""
  old = {k: getattr(engine, k) for k in attrs}
  class Restore:
    def __enter__(self):
      for k, v in attrs.items():
        setattr(engine, k, v)
      return engine
    def __exit__(self, *exc):
      for k, v in old.items():
        setattr(engine, k, v)
  return Restore()


def test_sampled_random_bytes_equal_sampler(tfree):
  """Temperature 1 on an untrained model: uniformly random bytes, i.e. invalid UTF-8, multi-byte characters,
  words finished several bytes late (rollback) and every class of the word table."""
  _, _, sampler, engine = tfree
  for seed in (0, 3):
    args = (PROMPTS, N_NEW, jax.random.key(seed), SamplingConfig(temperature=1.0))
    _same(sampler.generate(*args, record_logits=True, stop_at_eod=False),
          engine.generate(*args, record_logits=True, stop_at_eod=False))
  assert engine.stats.host_visits > 0 and engine.stats.words > 0


TEXT = {0: {b"etaoinshrdlu": 0.8, b" ": 0.12, b"ETAOIN.,'": 0.08}, 1: {b"etaoinshrdlu": 0.9, b"THE": 0.1},
        2: {b" ": 0.9, b"ab": 0.1}}


def test_text_like_greedy_and_top_k_equal_sampler(tfree):
  """A planted bigram writes letters and spaces: long words (cut at max_word_bytes), device-decided boundaries."""
  cfg, params, _, engine = tfree
  p = _text_like(params, TEXT)
  sampler = HATSampler(cfg, p, WordSplitter(max_word_bytes=M), 128)
  with _with(engine, params=p):
    for sampling in (GREEDY, SamplingConfig(temperature=0.9, top_k=8, top_p=0.95)):
      args = (PROMPTS, N_NEW, jax.random.key(1), sampling)
      a = sampler.generate(*args, record_logits=True)
      _same(a, engine.generate(*args, record_logits=True))
      # the device decided most boundaries: far fewer host visits than words
      assert engine.stats.host_visits < engine.stats.words / 4, engine.stats
  assert any(len(w) == M for g in a for w in g.words)  # a word was cut at max_word_bytes


def test_eod_stops_rows_and_host_threshold(tfree):
  cfg, params, _, engine = tfree
  p = _text_like(params, {0: {b"ab": 0.8, b" ": 0.1, bytes([EOD]): 0.1}, 1: {b"ab": 1.0}, 2: {b"ab ": 1.0}})
  sampler = HATSampler(cfg, p, WordSplitter(max_word_bytes=M), 128)
  args = (PROMPTS, N_NEW, jax.random.key(4), SamplingConfig(temperature=1.0))
  a = sampler.generate(*args, record_logits=True)
  with _with(engine, params=p, host_threshold=3):
    _same(a, engine.generate(*args, record_logits=True))
  assert any(g.generated.endswith(bytes([EOD])) and len(g.generated) < N_NEW for g in a)


@pytest.mark.slow  # bos=False framing: the samplers' own bos tests cover it in the default run
def test_without_bos(tfree):
  """bos=False: the prompt alone is the context; the engine still equals the uncached forward pass."""
  cfg, params, _, engine = tfree
  with _with(engine, bos=False):
    gens = engine.generate([b"Hello wo", b"x", b"abc", b"\xc3", b"1 2"], N_NEW, jax.random.key(2),
                           SamplingConfig(temperature=1.0), record_logits=True, stop_at_eod=False)
    with pytest.raises(ValueError):
      engine.generate([b""] * len(PROMPTS), N_NEW, jax.random.key(0))
  for g in gens:
    full = g.prompt + g.generated
    assert b"".join(g.words) == full
    ref = jit_helpers.apply(HAT(cfg), params, single_doc_batch(full, g.words))[0, :len(full) - 1]
    np.testing.assert_allclose(g.logits, ref, atol=1e-4)


@pytest.mark.slow  # two more compiled programs (~30 s)
def test_batched_equals_alone_and_scheduling_does_not_change_the_output(tfree):
  """Rows wait for backbone steps and are pooled together: how many wait, and how many byte states the
  pool packs (here fewer than a word may have, so that words also take the B x M fallback), changes
  when each row's steps run, not what they compute."""
  cfg, params, _, engine = tfree
  both = engine.generate([b"The cat", b"A dog ran"], 12, jax.random.key(0), GREEDY)
  alone = engine.generate([b"A dog ran"], 12, jax.random.key(9), GREEDY)
  assert both[1].generated == alone[0].generated
  args = (PROMPTS, N_NEW, jax.random.key(5), SamplingConfig(temperature=1.0))
  a = engine.generate(*args, record_logits=True)
  other = HATEngine(cfg, params, WordSplitter(max_word_bytes=M), 128, backbone_rows=4, pool_bytes=3,
                    host_threshold=3)
  _same(a, other.generate(*args, record_logits=True))
  assert other.stats.backbone_calls < engine.stats.backbone_calls


def test_sample_rows_equals_batch_sample():
  logits = jax.random.normal(jax.random.key(0), (5, 256)) * 3
  keys = hat_engine.step_keys(jax.random.key(1), 4)
  uniforms = hat_engine.step_uniforms(keys, 5)  # [steps, B]
  for cfg in (SamplingConfig(temperature=0.7), SamplingConfig(temperature=1.0, top_k=5, top_p=0.8)):
    per_step = np.stack([np.asarray(sample(logits, k, cfg)) for k in keys])  # [steps, B]
    at = np.array([0, 3, 1, 1, 2])  # each row at its own step
    got = np.asarray(hat_engine.sample_rows(logits, uniforms[at, np.arange(5)], cfg))
    np.testing.assert_array_equal(got, per_step[at, np.arange(5)])


def test_rejects_bad_requests(tfree):
  cfg, params, _, _ = tfree
  with pytest.raises(ValueError, match="max_word_bytes"):
    HATEngine(cfg, params, WordSplitter(max_word_bytes=M + 1))
  with pytest.raises(ValueError, match="PaperHATEngine"):
    HATEngine(hat_cfg("paper"), params, WordSplitter(max_word_bytes=M))
  engine = HATEngine(cfg, params, WordSplitter(max_word_bytes=M), 16)
  with pytest.raises(ValueError, match="exceeds max_total_bytes"):
    engine.generate([b"long prompt"], 10, jax.random.key(0))
  with pytest.raises(ValueError, match="at least one prompt"):
    engine.generate([], 10, jax.random.key(0))
  with pytest.raises(ValueError, match="max_new_bytes"):
    engine.generate([b"x"], 0, jax.random.key(0))


@pytest.mark.slow  # ~15 s of compiles
def test_paper_engine_equals_sampler():
  cfg = hat_cfg("paper")
  model = build_hat(cfg)
  params = jit_helpers.init(model, jax.random.key(2), packed_batch(), method=model.loss_and_metrics)
  splitter = WordSplitter(max_word_bytes=M)
  sampler = PaperHATSampler(cfg, params, splitter, 64)
  prompts = [b"The cat sat", b"", b"x"]
  # Word steps as soon as a row waits (1), the default (2 of 3 rows), or only when no row can go on (3):
  # when a row's word step runs must not change what it generates.
  for rows in (1, None, 3):
    engine = PaperHATEngine(cfg, params, splitter, 64, backbone_rows=rows)
    for sampling, seed in ((SamplingConfig(temperature=1.0), 0), (GREEDY, 1)):
      args = (prompts, 30, jax.random.key(seed), sampling)
      _same(sampler.generate(*args), engine.generate(*args), logits=False)
    assert engine.stats.words > 0


def test_paper_engine_equals_sampler_quick():
  cfg = hat_cfg("paper")
  model = build_hat(cfg)
  params = jit_helpers.init(model, jax.random.key(2), packed_batch(), method=model.loss_and_metrics)
  splitter = WordSplitter(max_word_bytes=M)
  args = ([b"The cat sat", b""], 12, jax.random.key(0), SamplingConfig(temperature=1.0))
  _same(PaperHATSampler(cfg, params, splitter, 64).generate(*args),
        PaperHATEngine(cfg, params, splitter, 64).generate(*args), logits=False)
