"""Float64 numpy reference of the released TFree-HAT forward pass, plus tiny random release checkpoints.

What this is. An independent numpy re-expression of the Hugging Face remote code of
`Aleph-Alpha/llama-3_1-8b-tfree-hat-base` (files `model.py`, `config.py`, `norm.py`, `splitter.py`;
read through this project's code index as ids 71280053114, 71361897321, 71588748481, 71078641278),
for testing a JAX port. It evaluates ONE document (what `HATForCausalLM.forward` does per call) with
explicitly given word lengths, in float64, with no cache.

  tiny_release_config(...)        config.json-style dict in the layout of `HATArchitectureConfig.to_dict`
  release_weight_shapes(config)   {released state_dict name: torch shape}
  random_release_weights(config)  {name: float32 array} in exactly that layout
  reference_logits(w, cfg, ...)   [num_bytes, 256] float64 logits

SEMANTICS, each with the released code it comes from.

  Llama layers (`transformer_backbone.LlamaDecoderLayer`; that file is not in the code index, it is
  imported from a copy of transformers 4.46.3 `modeling_llama`, whose semantics are used):
    x = x + o_proj(attn(input_layernorm(x)));  x = x + down(silu(gate(h)) * up(h)), h =
    post_attention_layernorm(x).  No biases on attention (LlamaConfig.attention_bias is not in the
    config dict, so False); MLP biases only if `mlp_bias`. head_dim = hidden_size // num_attention_heads
    (`head_dim` is not written by `to_dict`; honoured if present). GQA: query head h reads kv head
    h // (heads / kv_heads). Softmax scale 1 / sqrt(head_dim).
  RMSNorm (`norm.RMSNorm`, and LlamaRMSNorm): x * 1/sqrt(mean(x^2) + eps) * weight; eps INSIDE the
    square root; the weight multiplies after normalising. Every stack uses its own `rms_norm_eps`.
  RoPE (`LlamaRotaryEmbedding` of transformers 4.46.3, `apply_rotary_pos_emb` in model.py): rotate-half
    (first half / second half of each head, NOT interleaved pairs; `is_neox_style` is ignored), inv_freq
    = theta ** (-(0, 2, 4, ...) / head_dim), angle = position * inv_freq duplicated over both halves.
    rope_scaling None / "default": unchanged; "linear": inv_freq / factor; "llama3"
    (`_compute_llama3_parameters`): wavelen = 2 pi / inv_freq; low_wl = orig / low_freq_factor,
    high_wl = orig / high_freq_factor; wavelen > low_wl -> inv_freq / factor; wavelen < high_wl ->
    inv_freq; otherwise (1 - s) * inv_freq / factor + s * inv_freq with s = (orig / wavelen -
    low_freq_factor) / (high_freq_factor - low_freq_factor). Each module uses ITS config's theta and
    scaling (the encoder connector's cross-attention uses the ENCODER's rope config; the decoder's
    cross-attention the decoder's). The original computes angles in float32; here float64.
  Encoder (`HATEncoder`): byte embedding `encoder.embedding_layer` -> Llama layers, causal with the
    sliding window set on each layer (`layer.self_attn.sliding_window = config.sliding_window`): query
    byte i sees keys i-w .. i (w+1 keys; flash-attn window_size=(w, w), causal). Byte positions
    0..S-1 (`_generate_uncached` / `_initialize_generation_state`: arange). NO final norm.
  Encoder connector (`HATEncoderConnector`, `HATCrossAttention`): the learned `latent_query`
    [1, 1, D] repeated once per word -> q_proj (D -> c); k_proj / v_proj (encoder width -> c / r,
    r = heads / kv_heads); optional QK RMSNorm (`key_query_norm`; per head over head_dim if
    `key_query_norm_per_head`, else over the whole projected width c resp. c / r) BEFORE RoPE; RoPE on
    the query at the WORD position j, on the keys at the BYTE positions; flash_attn_varlen with
    cu_seqlens_q = 0..W and cu_seqlens_k = cumulative word lengths, i.e. word j's query attends to
    exactly the bytes of word j, non-causal, no window (the `causal` argument of
    HATCrossAttention.forward is ignored, causal=False is hard-coded); heads concatenated -> o_proj
    (c -> D). head_dim = c // heads must equal the ENCODER head_dim (its rotary table is built from the
    encoder config). The config's `hidden_size_q`, `hidden_size_kv` and `word_window_size` of the
    encoder cross-attention are NOT used (the connector passes D and the encoder width explicitly).
  Backbone (`HATBackbone`): Llama layers over the W word embeddings, positions 0..W-1
    (`word_position_ids` = arange), full causal (the window attribute is set only on encoder and
    decoder layers; a `sliding_window` in the backbone config is not applied here), NO final norm.
  Decoder connector (`HATDecoderConnector`): clone backbone output, overwrite the LAST word with
    `first_word_embedding`, roll right by one word: word 0 gets first_word_embedding, word j >= 1 gets
    the backbone output of word j-1 (the last word's backbone output is unused).
  Decoder (`HATDecoder`, `HATDecoderBlock`): starts from the raw encoder output. Block i (cross
    attention iff `cross_attn_every_layer` or i == 0): x = x + CrossAttn(q = query_norm(x),
    kv = kv_norm(predictive word embeddings), q positions = bytes, kv positions = words,
    cu_seqlens_q = cumulative word lengths, cu_seqlens_k = 0..W), then the Llama layer (window w, byte
    positions, decoder rope). Each byte of word j attends to exactly ONE key, the predictive embedding
    of word j, so the softmax weight is 1 and the result is o_proj(repeat_kv(v_proj(kv_norm(p_j)))):
    q_proj, k_proj, norm_query, norm_key, query_norm and RoPE cannot change the output (their weights
    exist in the checkpoint; this reference still evaluates the full attention). Every block uses the
    same connector output p (it is not updated between blocks). `query_norm` and `kv_norm` exist in
    EVERY decoder block, also those without cross-attention, where they are unused.
  Head (`HATForCausalLM`): `layer_norm` (RMSNorm, DECODER rms_norm_eps) -> `lm_head` (decoder width ->
    decoder vocab_size = 256, no bias, not tied).

SURPRISES in the released code.
  * `HATArchitectureConfig.to_dict` does not write `eos_token_id` (the constructor takes it, default 192);
    `tiny_release_config` writes it anyway, `from_dict` accepts it.
  * Stack configs never write `head_dim`, `hidden_act` or `attention_bias` (derived / defaults).
  * `HATCrossAttention.forward` takes `causal` but always calls flash-attn with causal=False.
  * The decoder cross-attention is a degenerate attention (one key per query), see above.
  * The connector query is the same vector for every word before RoPE; words differ only through RoPE
    at the word index and through their keys.
  * The window / causal masking of the Llama layers relies on flash-attention-2: transformers 4.46.3
    `LlamaFlashAttention2` passes `getattr(self, "sliding_window", None)` to `_flash_attention_forward`
    (window_size=(w, w), only when the key length exceeds w). The layers are called without an
    attention mask, so the 4.46.3 eager attention would not be causal and sdpa would ignore the window.
    `PreTrainedModel.__init__` copies the top-level attention implementation onto the three stack
    configs, so the model must be loaded with attn_implementation="flash_attention_2".

CROSS-CHECK (done once, outside this repository): the forward path of the released model.py / config.py
/ norm.py was transcribed to run on CPU in float64, with transformers 4.46.3 `LlamaDecoderLayer` /
`LlamaRotaryEmbedding` (flash-attention-2 class) standing in for `transformer_backbone` and a dense
torch stand-in for flash-attn (varlen, GQA, causal, window_size). For all tiny configs (cross-attention
every layer or not, GQA + QK-norm per head / full width / off, llama3 rope on / off) the released
`HATArchitectureConfig.from_dict(...).to_dict()` round-trips the dict of `tiny_release_config` (minus
`eos_token_id`), `load_state_dict(strict=True)` accepts `random_release_weights`, and the logits agree
with `reference_logits` to 8e-7 (logits of size ~4; the rest is the float32 rope angles of the original).
"""

import math

import numpy as np

VOCAB = 256


# --------------------------------------------------------------------------------------------------
# Config


def _cross_attention_config(*, hidden_size: int, hidden_size_q: int, hidden_size_kv: int, heads: int,
                            kv_heads: int, qk_norm: bool, per_head: bool) -> dict:
  return {
      "hidden_size_q": hidden_size_q,
      "hidden_size_kv": hidden_size_kv,
      "hidden_size": hidden_size,
      "num_attention_heads": heads,
      "attention_num_kv_heads": kv_heads,
      "word_window_size": 1,
      "key_query_norm": qk_norm,
      "key_query_norm_per_head": per_head if qk_norm else False,
  }


def _stack_config(*, vocab_size: int, hidden: int, layers: int, heads: int, kv_heads: int, eps: float,
                  intermediate: int, max_pos: int, rope_scaling: dict | None, theta: float,
                  sliding_window: int | None) -> dict:
  return {
      "vocab_size": vocab_size,
      "hidden_size": hidden,
      "num_hidden_layers": layers,
      "num_attention_heads": heads,
      "num_key_value_heads": kv_heads,
      "rms_norm_eps": eps,
      "intermediate_size": intermediate,
      "max_position_embeddings": max_pos,
      "rope_scaling": rope_scaling,
      "rope_theta": theta,
      "mlp_bias": False,
      "use_cache": True,
      "sliding_window": sliding_window,
      "transformers_version": "4.46.3",
      "key_query_norm": False,
      "key_query_norm_per_head": False,
      "is_neox_style": True,
  }


def tiny_release_config(*, cross_attn_every_layer: bool, gqa_qk_norm: bool, llama3_rope: bool = True,
                        qk_norm_per_head: bool = True) -> dict:
  """A tiny `config.json` in the layout of the released `HATArchitectureConfig.to_dict`.

  Encoder 32 wide, 2 layers, 4 heads x 8, window 4; backbone 48 wide, 2 layers, 4 heads x 12; decoder
  32 wide, 2 layers, 4 heads x 8, window 4. With `gqa_qk_norm` every stack and both cross-attentions
  use 2 kv heads and both cross-attentions have QK-norm: the encoder connector per head iff
  `qk_norm_per_head`, the decoder cross-attention the other way (no effect on the output there, but
  both weight layouts appear). Encoder connector: 8 heads x 8 = 64 (head_dim = encoder head_dim).
  Decoder cross-attention: 6 heads x 8 = 48 (head_dim = decoder head_dim, which its rotary table needs).
  rms_norm_eps 1e-2 / 1e-6 / 1e-3 and rope_theta 10,000 / 500,000 / 1,000 for encoder / backbone /
  decoder: distinct, and the eps large enough that a port mixing them up is off by more than float32
  noise. Backbone rope_scaling "llama3" (factor 8, low 1, high 4, original 64, so for head_dim 12 the
  three branches high / medium / low frequency all occur) iff `llama3_rope`.
  """
  enc_hidden, bb_hidden, dec_hidden = 32, 48, 32
  kv = 2 if gqa_qk_norm else None
  rope_scaling = None
  if llama3_rope:
    rope_scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64, "rope_type": "llama3"}
  encoder = _stack_config(vocab_size=VOCAB, hidden=enc_hidden, layers=2, heads=4, kv_heads=kv or 4, eps=1e-2,
                          intermediate=80, max_pos=256, rope_scaling=None, theta=10_000.0, sliding_window=4)
  encoder["cross_attention_config"] = _cross_attention_config(
      hidden_size=64, hidden_size_q=bb_hidden, hidden_size_kv=enc_hidden, heads=8, kv_heads=kv or 8,
      qk_norm=gqa_qk_norm, per_head=qk_norm_per_head)
  backbone = _stack_config(vocab_size=0, hidden=bb_hidden, layers=2, heads=4, kv_heads=kv or 4, eps=1e-6,
                           intermediate=96, max_pos=256, rope_scaling=rope_scaling, theta=500_000.0,
                           sliding_window=None)
  decoder = _stack_config(vocab_size=VOCAB, hidden=dec_hidden, layers=2, heads=4, kv_heads=kv or 4, eps=1e-3,
                          intermediate=72, max_pos=256, rope_scaling=None, theta=1_000.0, sliding_window=4)
  decoder["cross_attn_every_layer"] = cross_attn_every_layer
  decoder["cross_attention_config"] = _cross_attention_config(
      hidden_size=48, hidden_size_q=dec_hidden, hidden_size_kv=bb_hidden, heads=6, kv_heads=kv or 6,
      qk_norm=gqa_qk_norm, per_head=not qk_norm_per_head)
  return {
      "encoder_config": encoder,
      "backbone_config": backbone,
      "decoder_config": decoder,
      "model_type": "hierarchical_autoregressive_transformer",
      "transformers_version": "4.46.3",
      "auto_map": {"AutoConfig": "config.HATArchitectureConfig", "AutoModelForCausalLM": "model.HATForCausalLM"},
      "special_token_dict": {"<|eot_id|>": 192},
      "max_word_size": 16,
      "sliding_window": 4,
      "max_position_embeddings": 256,
      "torch_dtype": "bfloat16",
      "architectures": ["HATDecoderForCausalLM"],
      "eos_token_id": 192,
  }


# --------------------------------------------------------------------------------------------------
# Checkpoint layout


def _head_dim(stack: dict) -> int:
  return stack.get("head_dim") or stack["hidden_size"] // stack["num_attention_heads"]


def _llama_layer_shapes(prefix: str, stack: dict) -> dict:
  d, i = stack["hidden_size"], stack["intermediate_size"]
  hd = _head_dim(stack)
  q, kv = stack["num_attention_heads"] * hd, stack["num_key_value_heads"] * hd
  shapes = {
      f"{prefix}.self_attn.q_proj.weight": (q, d),
      f"{prefix}.self_attn.k_proj.weight": (kv, d),
      f"{prefix}.self_attn.v_proj.weight": (kv, d),
      f"{prefix}.self_attn.o_proj.weight": (d, q),
      f"{prefix}.mlp.gate_proj.weight": (i, d),
      f"{prefix}.mlp.up_proj.weight": (i, d),
      f"{prefix}.mlp.down_proj.weight": (d, i),
      f"{prefix}.input_layernorm.weight": (d,),
      f"{prefix}.post_attention_layernorm.weight": (d,),
  }
  if stack.get("mlp_bias"):
    shapes.update({f"{prefix}.mlp.gate_proj.bias": (i,), f"{prefix}.mlp.up_proj.bias": (i,),
                   f"{prefix}.mlp.down_proj.bias": (d,)})
  if stack.get("attention_bias"):
    shapes.update({f"{prefix}.self_attn.q_proj.bias": (q,), f"{prefix}.self_attn.k_proj.bias": (kv,),
                   f"{prefix}.self_attn.v_proj.bias": (kv,), f"{prefix}.self_attn.o_proj.bias": (d,)})
  return shapes


def _cross_attention_shapes(prefix: str, ca: dict, q_in: int, kv_in: int) -> dict:
  c, heads = ca["hidden_size"], ca["num_attention_heads"]
  c_kv = c // (heads // ca["attention_num_kv_heads"])
  shapes = {
      f"{prefix}.q_proj.weight": (c, q_in),
      f"{prefix}.k_proj.weight": (c_kv, kv_in),
      f"{prefix}.v_proj.weight": (c_kv, kv_in),
      f"{prefix}.o_proj.weight": (q_in, c),
  }
  if ca["key_query_norm"]:
    if ca["key_query_norm_per_head"]:
      shapes[f"{prefix}.norm_query.weight"] = (c // heads,)
      shapes[f"{prefix}.norm_key.weight"] = (c // heads,)
    else:
      shapes[f"{prefix}.norm_query.weight"] = (c,)
      shapes[f"{prefix}.norm_key.weight"] = (c_kv,)
  return shapes


def release_weight_shapes(config: dict) -> dict[str, tuple[int, ...]]:
  """Every tensor of the released state_dict (attribute paths of `HATForCausalLM`), torch shapes."""
  enc, bb, dec = config["encoder_config"], config["backbone_config"], config["decoder_config"]
  shapes = {"encoder.embedding_layer.weight": (enc["vocab_size"], enc["hidden_size"])}
  for i in range(enc["num_hidden_layers"]):
    shapes.update(_llama_layer_shapes(f"encoder.layers.{i}", enc))
  shapes["encoder_connector.latent_query"] = (1, 1, bb["hidden_size"])
  shapes.update(_cross_attention_shapes("encoder_connector.cross_attention_encoder_connector",
                                        enc["cross_attention_config"], bb["hidden_size"], enc["hidden_size"]))
  for i in range(bb["num_hidden_layers"]):
    shapes.update(_llama_layer_shapes(f"backbone.layers.{i}", bb))
  shapes["decoder_connector.first_word_embedding"] = (1, 1, bb["hidden_size"])
  dca = dec["cross_attention_config"]
  for i in range(dec["num_hidden_layers"]):
    prefix = f"decoder.decoder_layers.{i}"
    shapes.update(_llama_layer_shapes(f"{prefix}.llama_layer", dec))
    if dec["cross_attn_every_layer"] or i == 0:
      shapes.update(_cross_attention_shapes(f"{prefix}.cross_attention", dca, dca["hidden_size_q"],
                                            dca["hidden_size_kv"]))
    shapes[f"{prefix}.query_norm.weight"] = (dca["hidden_size_q"],)
    shapes[f"{prefix}.kv_norm.weight"] = (dca["hidden_size_kv"],)
  shapes["layer_norm.weight"] = (dec["hidden_size"],)
  shapes["lm_head.weight"] = (dec["vocab_size"], dec["hidden_size"])
  return shapes


def random_release_weights(config: dict, seed: int) -> dict[str, np.ndarray]:
  """Random float32 weights in the released layout. Norm weights 1 + 0.1 N(0, 1); embeddings, the
  latent query and first_word_embedding N(0, 1); matrices N(0, 1 / fan_in) (residual writers o_proj /
  down_proj at half that std), so activations stay O(1) and attention patterns are not uniform."""
  rng = np.random.default_rng(seed)
  weights = {}
  for name, shape in release_weight_shapes(config).items():
    if name.endswith(("norm.weight", "norm_query.weight", "norm_key.weight")):
      w = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name.endswith(".bias"):
      w = 0.1 * rng.standard_normal(shape)
    elif len(shape) == 2 and not name.endswith("embedding_layer.weight"):
      std = 1.0 / math.sqrt(shape[1])
      if ".o_proj." in name or ".down_proj." in name:
        std *= 0.5
      w = std * rng.standard_normal(shape)
    else:  # embedding table, latent_query, first_word_embedding
      w = rng.standard_normal(shape)
    weights[name] = w.astype(np.float32)
  return weights


# --------------------------------------------------------------------------------------------------
# Building blocks (float64)


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _linear(x: np.ndarray, weights: dict, name: str) -> np.ndarray:
  y = x @ weights[f"{name}.weight"].T
  if f"{name}.bias" in weights:
    y = y + weights[f"{name}.bias"]
  return y


def _inv_freq(stack: dict, head_dim: int) -> np.ndarray:
  theta = float(stack["rope_theta"])
  inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  scaling = stack.get("rope_scaling")
  rope_type = "default" if scaling is None else scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "default":
    return inv_freq
  if rope_type == "linear":
    return inv_freq / float(scaling["factor"])
  if rope_type == "llama3":
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    orig = float(scaling["original_max_position_embeddings"])
    wavelen = 2.0 * math.pi / inv_freq
    low_wavelen, high_wavelen = orig / low, orig / high
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (orig / wavelen - low) / (high - low)
    smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled)
  raise NotImplementedError(f"rope_type {rope_type!r}")


def _rope(x: np.ndarray, positions: np.ndarray, stack: dict) -> np.ndarray:
  """Rotate-half RoPE of x [N, heads, head_dim] at positions [N] with the stack's rope config."""
  head_dim = x.shape[-1]
  angles = positions.astype(np.float64)[:, None] * _inv_freq(stack, head_dim)[None, :]
  angles = np.concatenate([angles, angles], axis=-1)[:, None, :]
  half = head_dim // 2
  rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * np.cos(angles) + rotated * np.sin(angles)


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """q [Nq, H, hd], k / v [Nk, Hkv, hd], mask [Nq, Nk] (True = visible) -> [Nq, H * hd]. Query head h
  reads kv head h // (H / Hkv). Softmax scale 1 / sqrt(hd)."""
  heads, kv_heads, hd = q.shape[1], k.shape[1], q.shape[2]
  assert heads % kv_heads == 0
  rep = heads // kv_heads
  k = np.repeat(k, rep, axis=1)
  v = np.repeat(v, rep, axis=1)
  scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
  scores = np.where(mask[None], scores, -np.inf)
  scores = scores - scores.max(axis=-1, keepdims=True)
  probs = np.exp(scores)
  probs = probs / probs.sum(axis=-1, keepdims=True)
  out = np.einsum("hqk,khd->qhd", probs, v)
  return out.reshape(out.shape[0], heads * hd)


def _causal_mask(n: int, window: int | None) -> np.ndarray:
  i = np.arange(n)[:, None]
  j = np.arange(n)[None, :]
  mask = j <= i
  if window is not None:
    mask &= j >= i - window
  return mask


def _llama_layer(weights: dict, prefix: str, stack: dict, x: np.ndarray, positions: np.ndarray,
                 mask: np.ndarray) -> np.ndarray:
  eps = stack["rms_norm_eps"]
  hd = _head_dim(stack)
  h = _rms_norm(x, weights[f"{prefix}.input_layernorm.weight"], eps)
  q = _linear(h, weights, f"{prefix}.self_attn.q_proj").reshape(len(x), -1, hd)
  k = _linear(h, weights, f"{prefix}.self_attn.k_proj").reshape(len(x), -1, hd)
  v = _linear(h, weights, f"{prefix}.self_attn.v_proj").reshape(len(x), -1, hd)
  q, k = _rope(q, positions, stack), _rope(k, positions, stack)
  x = x + _linear(_attend(q, k, v, mask), weights, f"{prefix}.self_attn.o_proj")
  h = _rms_norm(x, weights[f"{prefix}.post_attention_layernorm.weight"], eps)
  gate = _linear(h, weights, f"{prefix}.mlp.gate_proj")
  up = _linear(h, weights, f"{prefix}.mlp.up_proj")
  silu = gate / (1.0 + np.exp(-gate))
  return x + _linear(silu * up, weights, f"{prefix}.mlp.down_proj")


def _cross_attention(weights: dict, prefix: str, ca: dict, stack: dict, q_in: np.ndarray, kv_in: np.ndarray,
                     q_pos: np.ndarray, kv_pos: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """`HATCrossAttention.forward`: projections, optional QK-norm (before RoPE), RoPE with the owning
  stack's rope config (q at q_pos, k at kv_pos), non-causal attention restricted by mask, o_proj."""
  heads, kv_heads = ca["num_attention_heads"], ca["attention_num_kv_heads"]
  hd = ca["hidden_size"] // heads
  assert hd == _head_dim(stack), "the cross-attention head_dim must equal its stack's head_dim (rotary table)"
  eps = stack["rms_norm_eps"]
  q = _linear(q_in, weights, f"{prefix}.q_proj")
  k = _linear(kv_in, weights, f"{prefix}.k_proj")
  v = _linear(kv_in, weights, f"{prefix}.v_proj")
  q = q.reshape(len(q), heads, hd)
  k = k.reshape(len(k), kv_heads, hd)
  v = v.reshape(len(v), kv_heads, hd)
  if ca["key_query_norm"]:
    if ca["key_query_norm_per_head"]:
      q = _rms_norm(q, weights[f"{prefix}.norm_query.weight"], eps)
      k = _rms_norm(k, weights[f"{prefix}.norm_key.weight"], eps)
    else:
      q = _rms_norm(q.reshape(len(q), -1), weights[f"{prefix}.norm_query.weight"], eps).reshape(q.shape)
      k = _rms_norm(k.reshape(len(k), -1), weights[f"{prefix}.norm_key.weight"], eps).reshape(k.shape)
  q, k = _rope(q, q_pos, stack), _rope(k, kv_pos, stack)
  return _linear(_attend(q, k, v, mask), weights, f"{prefix}.o_proj")


# --------------------------------------------------------------------------------------------------
# Forward


def reference_logits(weights: dict, config: dict, byte_ids: np.ndarray, word_lengths: list[int]) -> np.ndarray:
  """Logits [num_bytes, 256] (float64) of `HATForCausalLM.forward` for ONE document whose consecutive
  words have the given byte lengths. Row i predicts byte i + 1."""
  enc, bb, dec = config["encoder_config"], config["backbone_config"], config["decoder_config"]
  w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
  byte_ids = np.asarray(byte_ids, dtype=np.int64).reshape(-1)
  lengths = np.asarray(word_lengths, dtype=np.int64)
  assert np.all(lengths >= 1) and lengths.sum() == len(byte_ids), "word lengths must tile the bytes"
  num_bytes, num_words = len(byte_ids), len(lengths)
  byte_pos = np.arange(num_bytes)
  word_pos = np.arange(num_words)
  word_of_byte = np.repeat(word_pos, lengths)
  same_word = word_of_byte[None, :] == word_pos[:, None]  # [W, S]

  # Encoder.
  x = w["encoder.embedding_layer.weight"][byte_ids]
  mask = _causal_mask(num_bytes, enc["sliding_window"])
  for i in range(enc["num_hidden_layers"]):
    x = _llama_layer(w, f"encoder.layers.{i}", enc, x, byte_pos, mask)
  encoder_out = x

  # Encoder connector: one latent query per word over that word's bytes.
  latent = np.broadcast_to(w["encoder_connector.latent_query"].reshape(1, -1), (num_words, bb["hidden_size"]))
  words = _cross_attention(w, "encoder_connector.cross_attention_encoder_connector", enc["cross_attention_config"],
                           enc, latent, encoder_out, word_pos, byte_pos, same_word)

  # Backbone: full causal over words.
  mask = _causal_mask(num_words, None)
  for i in range(bb["num_hidden_layers"]):
    words = _llama_layer(w, f"backbone.layers.{i}", bb, words, word_pos, mask)

  # Decoder connector: word j is guided by the backbone output of word j - 1.
  predictive = np.concatenate([w["decoder_connector.first_word_embedding"].reshape(1, -1), words[:-1]], axis=0)

  # Decoder.
  dca = dec["cross_attention_config"]
  eps = dec["rms_norm_eps"]
  mask = _causal_mask(num_bytes, dec["sliding_window"])
  x = encoder_out
  for i in range(dec["num_hidden_layers"]):
    prefix = f"decoder.decoder_layers.{i}"
    if dec["cross_attn_every_layer"] or i == 0:
      q_in = _rms_norm(x, w[f"{prefix}.query_norm.weight"], eps)
      kv_in = _rms_norm(predictive, w[f"{prefix}.kv_norm.weight"], eps)
      x = x + _cross_attention(w, f"{prefix}.cross_attention", dca, dec, q_in, kv_in, byte_pos, word_pos,
                               same_word.T)
    x = _llama_layer(w, f"{prefix}.llama_layer", dec, x, byte_pos, mask)

  x = _rms_norm(x, w["layer_norm.weight"], eps)
  return x @ w["lm_head.weight"].T
