"""HAT at the paper's scale: the paper's own design (`variant="paper"`), sizes "1b", "3b" and "7b".

Neitemeier, Deiseroth, Eichenberg, Balles, "Hierarchical Autoregressive Transformers: Combining Byte- and
Word-Level Processing for Robust, Adaptable Language Models", arXiv:2501.10322 (ICLR 2025). These configs
are for ahead-of-time compilation on TPU pods, not for this machine:

  python -m hat_jax.main --config=configs/hat_paper.py:1b --workdir=gs://bucket/runs/hat_paper_1b

FROM THE PAPER (its hyper-parameter section and Table 4, read through secondary notes, not a first-hand copy):
  * backbone 18 / 28 / 36 layers = 1.1B / 4.3B / 9.2B params (1b / 3b / 7b);
  * encoder and decoder of the same shape: 3 layers x 6 heads (1b, 3b; "23M" / "24M") and
    4 layers x 8 heads (7b; "55M");
  * documents up to 16,384 bytes (~2.7k words), batch 1,024 sequences, 72k steps (~1.2T bytes);
  * AdamW b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1; 500 warm-up steps, cosine decay to 10 %;
  * learning rate lr(H) = (32 / H) * 3e-4 for a backbone with H heads ("not tuned");
  * the whitespace splitter (whitespace appended to the previous word): `split_rule="whitespace"`;
  * 5.97 bytes per whitespace word on DCLM (Fig. 2).

DERIVED HERE (the paper gives no widths):
  * Widths are 128 x layers with 128-wide heads, multi-head attention (kv heads = heads) and a SwiGLU
    MLP of 8/3 x width: backbone 2304 / 3584 / 4608 wide with 18 / 28 / 36 heads. Per layer that is
    12 d^2 params, so 12 * 2304^2 * 18 = 1.15B, 12 * 3584^2 * 28 = 4.32B, 12 * 4608^2 * 36 = 9.17B.
    The same rule gives the paper's BPE baselines (16 x 2048, 24 x 3072, 32 x 4096 with a 64k vocab:
    1.07B / 3.11B / 6.97B), so it is the likely design.
  * Byte modules: 6 heads x 128 = 768 wide (1b, 3b), 8 heads x 128 = 1024 wide (7b). Counted the
    paper's way (layers + byte embedding + the d <-> D projection), that is 23.2M / 24.2M / 55.3M
    PER MODULE, matching "23M / 24M / 55M", so those figures are per module, not for encoder +
    decoder together. (A 4 x 768 byte module, as a project issue has it for 7b, would hold 32M per
    module / 64M for both, matching neither reading; we use 4 x 1024.)
  * The backbone lr follows the paper's rule with H = backbone heads: 5.33e-4 / 3.43e-4 / 2.67e-4.
  * Gradient clip 1.0 (not in the notes); RoPE theta 10,000 and RMSNorm eps 1e-6 (not in the notes).

DATA CHOICES (documented, not from the paper):
  * `seq_bytes=16384` (the paper's context) and `seq_words=3072`: 16,384 / 5.97 = 2,744 words on
    average, the "~2.7k words" of the paper; 3,072 (a multiple of 128, the TPU lane width) leaves ~12 %
    headroom so rows are normally closed by the byte budget rather than cut short by the word budget.
  * `max_word_bytes=15`: the paper design pads each word to a [W] + 15 bytes = 16-position sequence in
    the encoder and the decoder, so the byte modules' cost scales with max_word_bytes + 1 per word (at a
    mean of ~6 bytes/word, 16 positions already cost ~2.7x the unpadded work; 32 would cost ~5.4x).
    Natural-language whitespace words rarely exceed 15 bytes; a longer one (URLs, long numbers, code)
    is cut into 15-byte pieces by the splitter, i.e. becomes several words, which the design allows
    (the split rule is the only non-learned step). Raise it with --config.data.max_word_bytes=31.
  * Corpus: "english" (hat_jax.data.corpora; the paper trained on DCLM-Baseline). Arguments as in
    configs/hat.py: `:1b,corpus=tfds:...`, `:1b,split_rule=tfree`.

Execution: bfloat16 compute with float32 master weights and Adam moments (`train.param_dtype`), every
stack scanned (`nn.scan` over layers) with full rematerialisation, the Pallas attention kernels, and a
pure-FSDP mesh (fsdp = all devices, data = tensor = 1): params and optimizer state are sharded over
every device on the `embed` dim and the batch is split over the same axis (common.default_rules).
"""

import ml_collections

from configs import common
from configs.hat import data_config, sample_config

HEAD_DIM = 128
# name: (backbone layers, byte-module layers, byte-module heads); widths = heads * HEAD_DIM,
# backbone heads = backbone layers (width 128 x layers).
SIZES = {
    "1b": (18, 3, 6),
    "3b": (28, 3, 6),
    "7b": (36, 4, 8),
}
# The paper's parameter counts, for the docs and tests/test_paper_configs.py. "byte_module" is per
# module (encoder or decoder, each counted with its byte embedding and its d <-> D projection).
PAPER_PARAMS = {
    "1b": dict(backbone=1.1e9, byte_module=23e6),
    "3b": dict(backbone=4.3e9, byte_module=24e6),
    "7b": dict(backbone=9.2e9, byte_module=55e6),
}
SEQ_BYTES, SEQ_WORDS, MAX_WORD_BYTES = 16_384, 3_072, 15
BATCH, STEPS, WARMUP = 1024, 72_000, 500


def paper_lr(backbone_heads: int) -> float:
  """The paper's (untuned) rule: 3e-4 for a 32-head backbone, lr(H) = (32 / H) * 3e-4."""
  return 32 / backbone_heads * 3e-4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="1b", seed=0, split_rule="whitespace", corpus="english")
  b_layers, m_layers, m_heads = common.size_row(SIZES, arg.size, "hat_paper")
  d, bd = m_heads * HEAD_DIM, b_layers * HEAD_DIM
  config = common.base_config("hat", seed=arg.seed)
  config.train = common.train_defaults(
      steps=STEPS, batch_size=BATCH, learning_rate=paper_lr(b_layers), warmup_steps=WARMUP, lr_end_fraction=0.1,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0, param_dtype="float32", log_every=100,
      eval_every=2_000, checkpoint_every=2_000)
  config.mesh = common.pod_mesh()
  config.model = ml_collections.ConfigDict(dict(
      variant="paper", encoder=common.pod_stack(d, m_layers, m_heads), backbone=common.pod_stack(bd, b_layers, b_layers),
      decoder=common.pod_stack(d, m_layers, m_heads), pool_heads=b_layers, attention_impl="pallas",
      dtype="bfloat16"))
  config.data = data_config(SEQ_BYTES, SEQ_WORDS, 64, arg.corpus, arg.split_rule, max_word_bytes=MAX_WORD_BYTES)
  config.sample = sample_config(300)
  return config
