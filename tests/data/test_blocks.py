"""hat_jax.data.blocks: block-aligned rows (layout, padding, targets), the training windows and the eval rows."""

import numpy as np
import pytest

from hat_jax.data.blocks import PAD_ID, DocumentWindows, aligned_row, block_align, eval_batches, eval_rows

L = 4


def test_aligned_row_layout():
  row = aligned_row([np.arange(5) + 1, np.arange(6) + 100], 24, L, [3, 0])
  # doc 1: 3 pads + 5 bytes = 8 = 2 blocks; doc 2: 6 bytes -> 8 (2 pad); then 8 padding slots.
  np.testing.assert_array_equal(row["tokens"][:8], [PAD_ID] * 3 + [1, 2, 3, 4, 5])
  np.testing.assert_array_equal(row["tokens"][8:16], list(range(100, 106)) + [PAD_ID] * 2)
  np.testing.assert_array_equal(row["segment_ids"], [1] * 8 + [2] * 8 + [0] * 8)
  np.testing.assert_array_equal(row["positions"][8:16], np.arange(8))
  # Targets: real bytes outside each document's first block.
  np.testing.assert_array_equal(np.flatnonzero(row["loss_mask"]), [4, 5, 6, 7, 12, 13])


def test_aligned_row_truncates_and_rejects_bad_args():
  row = aligned_row([np.arange(30)], 16, L, [2])
  np.testing.assert_array_equal(row["tokens"][2:], np.arange(14))
  with pytest.raises(ValueError, match="multiple of block_len"):
    aligned_row([np.arange(3)], 10, L, [0])
  with pytest.raises(ValueError, match="lead padding"):
    aligned_row([np.arange(3)], 8, L, [L])


def test_block_align_random_first_block_padding():
  tokens = np.arange(2 * 32).reshape(2, 32) % 200
  segs = np.array([[1] * 10 + [2] * 15 + [3] * 7, [1] * 32])
  rng = np.random.default_rng(0)
  leads = set()
  for _ in range(20):
    out = block_align(tokens, segs, L, rng, seq_len=48)
    for r in range(2):
      seg = out["segment_ids"][r]
      starts = np.flatnonzero(np.diff(np.concatenate([[0], seg])) != 0)
      starts = starts[seg[starts] != 0]
      assert np.all(starts % L == 0)  # every document starts at a block boundary
      for s in starts:
        lead = int(np.argmax(out["tokens"][r, s:] != PAD_ID))
        assert 0 <= lead < L
        leads.add(lead)
    # Every input byte survives (48 slots are enough here), in order.
    kept = out["tokens"][0][out["tokens"][0] != PAD_ID]
    np.testing.assert_array_equal(kept, tokens[0])
  assert leads == set(range(L))
  fixed = block_align(tokens, segs, L, None, lead_pad=L - 1, seq_len=48)
  np.testing.assert_array_equal(fixed["tokens"][1, :L], [PAD_ID] * 3 + [tokens[1, 0]])
  with pytest.raises(ValueError, match="rng"):
    block_align(tokens, segs, L, None)


def test_document_windows_deterministic_and_resumable():
  docs = [bytes(range(200)), bytes(range(50, 250))]
  a = DocumentWindows(docs, 3, 16, L, seed=5, random_pad=True)
  first = [next(a) for _ in range(3)]
  b = DocumentWindows(docs, 3, 16, L, seed=5, random_pad=True)
  b.set_state({"step": 2})
  np.testing.assert_array_equal(next(b)["tokens"], first[2]["tokens"])
  assert a.get_state() == {"step": 3}
  assert first[0]["tokens"].shape == (3, 16)




def test_eval_rows_are_consecutive_windows_after_block_len_minus_one_pads():
  rows = eval_rows([bytes(range(60)), bytes(range(100, 140))], 16, L, max_rows=10)
  # stride 16 - 3 = 13: doc 1 (60 bytes) -> windows at 0, 13, 26, 39, 52; doc 2 (40 bytes) -> 0, 13, 26.
  assert len(rows) == 8
  np.testing.assert_array_equal(rows[1]["tokens"], [PAD_ID] * 3 + list(range(13, 26)))
  np.testing.assert_array_equal(rows[5]["tokens"], [PAD_ID] * 3 + list(range(100, 113)))
  assert all(r["loss_mask"][:L].sum() == 0 for r in rows)  # the first block is never a target
  assert len(eval_rows([bytes(range(60))], 16, L, max_rows=2)) == 2
  batches = eval_batches([bytes(range(60)), bytes(range(100, 140))], 16, L, max_rows=10, batch_size=3)
  assert [b["tokens"].shape for b in batches] == [(3, 16), (3, 16), (2, 16)]
  np.testing.assert_array_equal(batches[1]["tokens"][2], rows[5]["tokens"])


def test_document_windows_shards_and_errors():
  docs = [bytes(range(200))]
  a = next(DocumentWindows(docs, 2, 16, L, seed=5, random_pad=False, shard=(0, 2)))
  b = next(DocumentWindows(docs, 2, 16, L, seed=5, random_pad=False, shard=(1, 2)))
  assert not np.array_equal(a["tokens"], b["tokens"])
  assert np.all(a["tokens"][:, 0] != PAD_ID)  # no lead padding without random_pad
  with pytest.raises(ValueError, match="at least one document"):
    DocumentWindows([], 2, 16, L, seed=0, random_pad=True)
