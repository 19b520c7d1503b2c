"""Data: registry-fetched corpora, MNIST and TFDS sources (see hat_jax/data/corpora.py)."""
