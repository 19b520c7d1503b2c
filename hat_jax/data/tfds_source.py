"""Random-access documents from an already prepared TFDS dataset (c4, wiki40b, ...) on local disk/GCS.

For users who have real TFDS data on their machines; nothing here downloads or builds a dataset.
`tfds.data_source` reads ArrayRecord files directly and works without TensorFlow (checked with
tensorflow-datasets 4.9.10 + array_record 0.8.6 and no tensorflow installed). It needs the dataset
to have been prepared with `file_format="array_record"`; datasets stored as TFRecord (the old
default) must be converted once, e.g. `tfds convert_format --dataset_dir=... --out_file_format=array_record`
(that tool needs TensorFlow, on any machine).

The returned source has `__len__`/`__getitem__` and pickles, so it plugs into grain:
`grain.MapDataset.source(tfds_documents("wiki40b/en", "train", data_dir))`. Training reads it through
`hat_jax.data.streaming` (`config.data.corpus = "tfds:wiki40b/en"`, see `hat_jax.train.lm_tasks`).
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Sequence


class TfdsDocuments(Sequence):
  """Sequence of documents (UTF-8 bytes) over a TFDS data source; `text_key` selects the feature."""

  def __init__(self, source: Any, text_key: str = "text"):
    self._source = source
    self._text_key = text_key

  def __len__(self) -> int:
    return len(self._source)

  def _text(self, example: dict) -> bytes:
    try:
      value = example[self._text_key]
    except KeyError:
      raise KeyError(f"TFDS example has no feature {self._text_key!r}; features are "
                     f"{sorted(example)}. Pass text_key=<one of them> (config.data.text_key in training).") from None
    if isinstance(value, str):
      return value.encode("utf-8")
    if hasattr(value, "item"):  # numpy scalar (object/bytes) from some decoders
      value = value.item()
    return value if isinstance(value, bytes) else str(value).encode("utf-8")

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"document index {index} out of range for {len(self)} documents")
    return self._text(self._source[index])

  def __getitems__(self, indices: Sequence[int]) -> list[bytes]:
    """Batched read (grain uses it when present): one call into ArrayRecord for all indices."""
    getitems = getattr(self._source, "__getitems__", None)
    if getitems is None:
      return [self[i] for i in indices]
    return [self._text(e) for e in getitems(list(indices))]

  def __repr__(self) -> str:
    return f"TfdsDocuments({len(self)} documents, text_key={self._text_key!r})"


def _import_builder_module(name: str) -> None:
  """Registers the builder class for `name` if its module is importable without TensorFlow.

  Without TensorFlow, `import tensorflow_datasets` does not register most builders (e.g. wiki40b).
  On real data `tfds.data_source` falls back to reading the builder from the files in `data_dir`,
  so this only matters for code-based lookups such as `tfds.testing.mock_data`; failures are ignored.
  """
  family = name.split("/")[0].split(":")[0]
  for package in ("tensorflow_datasets.text", "tensorflow_datasets.datasets"):
    for module in (f"{package}.{family}", f"{package}.{family}.{family}_dataset_builder"):
      try:
        importlib.import_module(module)
        return
      except Exception:  # noqa: BLE001 - absent or needs optional deps; data_dir lookup remains
        continue


def tfds_documents(name: str, split: str, data_dir: str | os.PathLike | None,
                   text_key: str = "text") -> TfdsDocuments:
  """Random-access documents (bytes) of TFDS dataset `name` ("wiki40b/en", "c4/en:3.1.0", ...).

  Args:
    name: TFDS name, optionally with config and version.
    split: TFDS split string ("train", "validation", "train[:1%]", ...).
    data_dir: folder that holds the prepared dataset (the one passed to `tfds.builder`).
    text_key: feature holding the text ("text" for c4 and wiki40b).
  """
  import tensorflow_datasets as tfds  # deferred: heavy import, only for users of this path

  _import_builder_module(name)
  try:
    # download=False: data_source would otherwise try to download and build a missing dataset.
    source = tfds.data_source(name, split=split, download=False, try_gcs=False,
                              data_dir=None if data_dir is None else os.fspath(data_dir))
  except Exception as e:
    raise RuntimeError(
        f"tfds.data_source({name!r}, split={split!r}, data_dir={data_dir!r}) failed: {e}\n"
        f"Expected a dataset already prepared under data_dir in ArrayRecord format (this code never "
        f"downloads). If it is stored as TFRecord, convert it once with `tfds convert_format`.") from e
  docs = TfdsDocuments(source, text_key)
  if len(docs):
    docs[0]  # a wrong text_key fails here, naming the features, not later inside a reader thread
  return docs
