"""Image data: MNIST resizing, synthetic strokes, splits and limits, checkpointable batches with CFG label
dropout, eval batches, pixel tokens, and the tokenizer-content-keyed token cache."""

import ml_collections
import numpy as np
import pytest

from hat_jax.data import images as image_data


def test_mnist_preprocessing():
  digits = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
  small = image_data.prepare_mnist_images(digits, 16)  # pad 2 px to 32x32, then 2x2 average
  assert small.shape == (5, 16, 16) and small.dtype == np.uint8
  assert (small[:, 0, :] == 0).all()  # the top output row covers two padding rows
  np.testing.assert_array_equal(small[:, 1, 1], np.round(digits[:, 0:2, 0:2].mean(axis=(1, 2))))
  padded = image_data.prepare_mnist_images(digits, 32)
  np.testing.assert_array_equal(padded[:, 2:30, 2:30], digits)
  with pytest.raises(ValueError, match=r"Expected MNIST images \[N, 28, 28\]"):
    image_data.prepare_mnist_images(digits[:, :20, :20])
  with pytest.raises(ValueError, match="must be 16 or 32"):
    image_data.prepare_mnist_images(digits, 8)


def data_config(**overrides):
  return ml_collections.ConfigDict({**dict(source="synthetic", image_size=16, cache_dir="", max_train_examples=0,
                                           eval_examples=0, synthetic_examples=40), **overrides})


def test_synthetic_splits_and_limits():
  images, labels = image_data.load_images(data_config(), "train")
  assert images.shape == (40, 16, 16) and images.dtype == np.uint8 and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < image_data.NUM_CLASSES and images.max() > 200
  test_images, _ = image_data.load_images(data_config(), "test")
  assert len(test_images) == 10 and not np.array_equal(test_images, images[:10])  # a different seed
  np.testing.assert_array_equal(image_data.load_images(data_config(max_train_examples=7), "train")[0], images[:7])
  assert len(image_data.load_images(data_config(eval_examples=3), "test")[0]) == 3
  with pytest.raises(ValueError, match="Unknown config.data.source 'cifar'"):
    image_data.load_images(data_config(source="cifar"), "train")


def test_checkpointable_batches_with_label_dropout():
  arrays = {"images": np.zeros((5, 4, 4), np.uint8), "labels": np.arange(5, dtype=np.int32)}
  it = image_data.ArrayBatches(arrays, 64, seed=3, drop_rate=0.5, null_class=10)
  next(it)
  state = it.get_state()
  expected = next(it)
  resumed = image_data.ArrayBatches(arrays, 64, seed=3, drop_rate=0.5, null_class=10)
  resumed.set_state(state)
  got = next(resumed)
  np.testing.assert_array_equal(got["images"], expected["images"])
  np.testing.assert_array_equal(got["labels"], expected["labels"])
  assert 0 < np.mean(expected["labels"] == 10) < 1  # CFG label dropout happens in the iterator


def test_whole_batches_and_pixel_tokens():
  arrays = {"images": np.arange(7 * 4, dtype=np.uint8).reshape(7, 2, 2), "labels": np.arange(7)}
  batches = image_data.whole_batches(arrays, 3)
  assert [b["labels"].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5]]  # the partial batch is dropped
  tokens = image_data.pixel_tokens(arrays["images"])
  assert tokens.shape == (7, 4) and tokens.dtype == np.int32 and tokens[1].tolist() == [4, 5, 6, 7]  # raster order
  np.testing.assert_array_equal(image_data.pixel_images(tokens, 2), arrays["images"])


def test_token_cache_is_keyed_on_the_tokenizer_content():
  calls = []

  def encode(params, x):
    calls.append(len(x))
    return x.reshape(len(x), -1)[:, :2].astype(np.int32) + params["shift"]

  images = np.random.default_rng(0).integers(0, 200, (5, 2, 2), dtype=np.uint8)
  first = image_data.tokenize_images(encode, {"shift": np.int32(1)}, images, chunk=2)
  assert calls == [2, 2, 1] and first.dtype == np.int32
  np.testing.assert_array_equal(first, images.reshape(5, -1)[:, :2] + 1)
  again = image_data.tokenize_images(encode, {"shift": np.int32(1)}, images.copy(), chunk=2)  # equal content
  assert calls == [2, 2, 1] and again is first
  retrained = image_data.tokenize_images(encode, {"shift": np.int32(2)}, images, chunk=2)  # new params, same shapes
  assert calls == [2, 2, 1, 2, 2, 1]
  np.testing.assert_array_equal(retrained, first + 1)
  assert image_data.params_digest({"a": np.zeros(2)}) != image_data.params_digest({"b": np.zeros(2)})
