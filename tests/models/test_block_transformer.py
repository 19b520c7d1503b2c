"""Block Transformer + vanilla baseline: shapes, causal / block / segment masks, the shared scoring of
block-aligned rows, configs and tasks, tensor-parallel sharding. The row layout itself: tests/data/test_blocks.py."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hat_jax import sharding
from hat_jax.data.batching import stack_rows
from hat_jax.data.blocks import DocumentWindows, aligned_row, eval_rows
from hat_jax.models.block_transformer import DECODINGS, BlockTransformer, BlockTransformerConfig
from hat_jax.models.decoder_lm import DecoderLM, DecoderLMConfig
from hat_jax.models.layers import StackConfig
from hat_jax.train.block_tasks import TASKS, block_loss, vanilla_loss
from tests import jit_helpers

L = 4


def stack(d, layers=1):
  return StackConfig(d_model=d, num_layers=layers, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=2 * d)


def block_cfg(decoding="prefix", **kw):
  return BlockTransformerConfig(stack(16), stack(16), decoding=decoding, **kw)


def init(model, seq_len=16, seed=0):
  return jit_helpers.init(model, jax.random.key(seed), jnp.zeros((1, seq_len), jnp.int32))


def rand_tokens(shape, seed=1):
  return jax.random.randint(jax.random.key(seed), shape, 0, 256, jnp.int32)


@pytest.mark.parametrize("decoding", DECODINGS)
def test_shapes_and_embedder(decoding):
  cfg = block_cfg(decoding)
  model = BlockTransformer(cfg)
  params = init(model)
  logits = jit_helpers.apply(model, params, rand_tokens((3, 20)))
  assert logits.shape == (3, 20 // L - 1, L, 256)
  table = params["params"]["embedder"]["embedding"]
  table = getattr(table, "value", table)
  assert table.shape == (257, 16 // L)  # D_emb = D / L_B; one extra row for pad_id
  padded = jax.eval_shape(BlockTransformer(block_cfg(decoding, vocab_pad_to_multiple=8)).init, jax.random.key(0),
                          jnp.zeros((1, 2 * L), jnp.int32))["params"]
  assert padded["embedder"]["embedding"].value.shape == (264, 16 // L)  # 257 rounded up to a multiple of 8
  assert padded["token_decoder"]["embed"]["embedding"].value.shape == (264, 16)
  assert cfg.token_context == (2 + L - 1 if decoding == "prefix" else L)


@pytest.mark.parametrize("decoding", DECODINGS)
def test_block_causality(decoding):
  """Logits for block j, byte k depend on blocks < j and bytes < k of block j, and on nothing later."""
  model = BlockTransformer(block_cfg(decoding))
  params = init(model)
  tokens = rand_tokens((1, 24))
  base = jit_helpers.apply(model, params, tokens)  # [1, 5, L, V]: index i predicts block i+1
  j, k = 3, 1  # perturb byte k of block j
  changed = jit_helpers.apply(model, params, tokens.at[0, j * L + k].set((tokens[0, j * L + k] + 7) % 256))
  diff = np.abs(np.asarray(changed - base)).max(axis=-1)[0]  # [5, L]
  np.testing.assert_array_equal(diff[:j - 1], 0.0)  # earlier blocks' predictions
  np.testing.assert_array_equal(diff[j - 1, :k + 1], 0.0)  # block j's own bytes <= k
  assert diff[j - 1, k + 1:].min() > 0  # later bytes of block j see byte k (within-block attention)
  assert diff[j:].min() > 0  # later blocks see it through the block decoder


def test_segments_isolate_documents_at_block_level():
  """A second document in the row gives the same logits as that document alone."""
  model = BlockTransformer(block_cfg())
  params = init(model)
  doc_a, doc_b = np.arange(7) + 40, np.arange(13) + 90
  row = aligned_row([doc_a, doc_b], 32, L, [1, 2])
  alone = aligned_row([doc_b], 16, L, [2])
  get = lambda r: jit_helpers.apply(model, params, jnp.asarray(r["tokens"])[None], segment_ids=jnp.asarray(r["segment_ids"])[None],
                              positions=jnp.asarray(r["positions"])[None])
  both, single = get(row), get(alone)
  # doc_b starts at block 2 of the row (7 bytes + 1 lead pad -> 2 blocks); its target blocks follow.
  np.testing.assert_allclose(both[0, 2:5], single[0, 0:3], atol=1e-5)
  assert np.abs(np.asarray(both[0, 2:5] - get(aligned_row([doc_b], 32, L, [2]))[0, 0:3])).max() < 1e-5


# -- scoring ------------------------------------------------------------------------------------------


def test_both_models_score_the_same_bytes():
  batch = {k: jnp.asarray(v) for k, v in stack_rows(eval_rows([bytes(range(60)), bytes(range(100, 140))], 16, L,
                                                               max_rows=10)).items()}
  bt = BlockTransformer(block_cfg())
  va = DecoderLM(DecoderLMConfig(stack(16), pad_row=True))
  _, mb = block_loss(bt, init(bt), batch)
  _, mv = vanilla_loss(va, init(va), batch)
  assert float(mb["target_bytes"]) == float(mv["target_bytes"]) == float(batch["loss_mask"].sum()) > 0
  assert np.isfinite(float(mb["loss"])) and np.isfinite(float(mv["loss"]))


# -- config errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(block_len=3), "divisible by block_len"),
    (dict(block_len=0), "block_len"),
    (dict(decoding="sum"), "decoding must be one of"),
    (dict(prefix_len=0), "prefix_len"),
    (dict(vocab_size=1), "vocab_size"),
    (dict(vocab_pad_to_multiple=0), "vocab_pad_to_multiple must be a positive int"),
])
def test_bad_block_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    block_cfg(**kwargs)


def test_bad_config_errors_from_dicts_and_inputs():
  good = dict(block_decoder=dict(stack(16).__dict__), token_decoder=dict(stack(16).__dict__))
  assert BlockTransformerConfig.from_config(good).block_len == L
  with pytest.raises(ValueError, match="Unknown Block Transformer config fields"):
    BlockTransformerConfig.from_config({**good, "blocklen": 4})
  with pytest.raises(ValueError, match="token_decoder"):
    BlockTransformerConfig.from_config({"block_decoder": good["block_decoder"]})
  with pytest.raises(ValueError, match="window"):
    BlockTransformerConfig(StackConfig(16, 1, 2, 1, 8, 32, window=4), stack(16))
  model = BlockTransformer(block_cfg())
  params = init(model)
  with pytest.raises(ValueError, match="multiple of block_len"):
    model.apply(params, jnp.zeros((1, 10), jnp.int32))
  with pytest.raises(ValueError, match="at least 2 blocks"):
    model.apply(params, jnp.zeros((1, L), jnp.int32))


# -- tasks and configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("config_module", ["block_transformer", "vanilla_lm"])
def test_tiny_config_task_loss_and_sample(config_module):
  module = importlib.import_module(f"configs.{config_module}")
  config = module.get_config("tiny")
  config.sample.num_bytes = 6  # block model rounds up to a whole block
  task = TASKS[config.task](config)
  params = task.init_params(jax.random.key(0))
  batch = next(DocumentWindows([bytes(range(97, 123)) * 4], 2, config.data.seq_len, L, seed=0,
                               random_pad=config.data.random_pad_first_block))
  loss, metrics = jax.jit(task.loss)(params, batch, None)
  assert np.isfinite(float(loss)) and float(metrics["target_bytes"]) == task.units_per_batch(batch) > 0
  text = task.generate(params, jax.random.key(1))
  assert isinstance(text, str) and len(text.encode("utf-8", errors="surrogateescape")) >= 1
  with pytest.raises(ValueError, match="Unknown"):
    module.get_config("huge")


@pytest.mark.parametrize("config_module", ["block_transformer", "vanilla_lm"])
def test_tasks_read_the_corpus_as_block_aligned_rows(config_module):
  config = importlib.import_module(f"configs.{config_module}").get_config("tiny")
  config.data.corpus, config.data.eval_rows = "toy", 6
  task = TASKS[config.task](config)
  batch = next(task.train_iterator(0, process_index=1, process_count=2))  # half of the global batch of 4
  assert batch["tokens"].shape == (2, 32) and np.all(batch["segment_ids"][:, 0] == 1)
  assert [b["tokens"].shape for b in task.eval_batches()] == [(4, 32), (2, 32)]
  assert {k: v.shape for k, v in task.batch_spec(3).items()} == {k: (3, 32) for k in batch}
  with pytest.raises(ValueError, match="divisible by the process count 3"):
    task.train_iterator(0, process_count=3)


def test_task_config_errors():
  config = importlib.import_module("configs.vanilla_lm").get_config("tiny")
  config.model.pad_row = False
  with pytest.raises(ValueError, match="padded with id 256.*pad row"):
    TASKS[config.task](config)
  config = importlib.import_module("configs.block_transformer").get_config("tiny")
  config.model.vocab_size = 512
  with pytest.raises(ValueError, match="vocab_size=256"):
    TASKS[config.task](config)
  config.model.vocab_size, config.data.corpus = 256, "tfds:wiki40b/en"
  with pytest.raises(ValueError, match="TFDS corpora are streamed by the byte tasks"):
    TASKS[config.task](config)


def _sharded_init(task, mesh, rules):
  with nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(task.init_params, jax.random.key(0))
    shardings = sharding.state_shardings(abstract, mesh, rules)  # checks divisibility
    return jax.jit(lambda rng: nn.unbox(task.init_params(rng)), out_shardings=shardings)(jax.random.key(0))


@pytest.mark.parametrize("config_module, table", [("block_transformer", ("embedder", "embedding")),
                                                  ("vanilla_lm", ("embed", "embedding"))],
                         ids=["block_transformer", "vanilla_lm"])
def test_tiny_config_runs_with_tensor_parallelism_2(config_module, table):
  """Mesh data=4 x tensor=2 on the 8 CPU devices: the input table (padded to 264 rows) shards over
  `tensor` and the sharded loss equals the one-device loss; the unpadded 257-row table is a clear error."""
  config = importlib.import_module(f"configs.{config_module}").get_config("tiny")
  config.mesh.data, config.mesh.tensor = 4, 2
  mesh, rules = sharding.make_mesh(config.mesh), sharding.logical_rules(config.logical_axis_rules)
  task = TASKS[config.task](config)
  params = _sharded_init(task, mesh, rules)
  embedding = params["params"][table[0]][table[1]]
  assert embedding.shape[0] == 264 and embedding.sharding.spec[0] == "tensor"
  batch = next(DocumentWindows([bytes(range(97, 123)) * 4], 4, config.data.seq_len, L, seed=0, random_pad=True))
  with sharding.use_mesh(mesh, rules):
    loss, _ = jax.jit(task.loss)(params, sharding.global_batch_from_full(batch, mesh, rules), None)
  reference, _ = jax.jit(task.loss)(jax.device_get(params), batch, None)
  np.testing.assert_allclose(float(loss), float(reference), rtol=1e-5)

  config.model.vocab_pad_to_multiple = 1
  with pytest.raises(ValueError, match=rf"'vocab' \(size 257\) over mesh axes \('tensor',\).*{table[1]}: dim 0"):
    _sharded_init(TASKS[config.task](config), mesh, rules)
