"""Generation. Each word names one role:

  sample     draw one token from logits (`sampling.sample`, configured by `SamplingConfig`; temperature
             0 = greedy). Nothing else in this package is called "sample".
  generate   produce a whole output from a model: `<engine>.generate(prompts, ...)` for text,
             `images.generate_<family>(...)` for images, and `Task.generate` (what `--mode=sample`
             runs) on top of them.
  engine     a generation loop that runs on the device: one jitted `lax.while_loop` per call, fixed
             shapes, ragged rows. `block_engine` (Block Transformer and every `DecoderLM`), `hat_engine`
             (HAT, returning to the host only where the word splitter must decide). What `--mode=sample`
             uses.
  sampler    HAT's host loop (`hat_sampler.HATSampler`, `PaperHATSampler`): one device step per byte and
             the splitter asked every time. Exact by construction, it is the reference the engine is
             tested against, and `sample.engine="host"` selects it.
"""
