"""Byte-level baseline: one causal transformer over bytes, same data and batches as configs/hat.py.

  python -m hat_jax.main --config=configs/bytes.py:tiny --workdir=runs/bytes_tiny

A `hat_jax.models.decoder_lm.DecoderLM` over bytes whose stack has the HAT backbone's width and depth
(the comparison of the benchmark and paper tables), full causal attention, masked by index (packed rows).
The stack section is `model.stack` (the scaling sweeps override `model.stack.*`).
"""

from configs import common
from configs import hat as hat_config


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, size="tiny", seed=0, corpus="english", split_rule="tfree")
  config = hat_config.get_config(f"size={arg.size},seed={arg.seed},corpus={arg.corpus},split_rule={arg.split_rule}")
  backbone = config.model.backbone
  backbone.window = None
  config.task = "bytes"
  config.model = dict(stack=backbone, vocab_size=256, mask_by_index=True, attention_impl="auto", dtype="float32")
  return config
