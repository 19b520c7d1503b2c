r"""Command line: train, evaluate, sample or score any registered task.

  python -m hat_jax.main --config=configs/hat.py:tiny --workdir=runs/x --mode=train \
      --config.train.steps=100 --config.mesh.data=-1

Modes: train (resumes from --workdir automatically), eval (latest checkpoint on the eval batches),
sample (latest checkpoint -> `task.generate`), train_and_sample, score (latest checkpoint: bits per
byte of --score_text and/or multiple-choice accuracy over --score_choices; `hat_jax.score`, for the
byte-level LM tasks `hat` and `bytes`). Multi-host: the same command on every host;
`jax.distributed.initialize()` runs when the environment (or --coordinator_address) says so.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from hat_jax import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/hat.py:tiny.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "train_and_sample", "score"], "What to do.")
# Scoring inputs are flags, not config fields: they are not part of the experiment (a run's checkpoints
# compare configs), and any file can be scored against any run.
_SCORE_TEXT = flags.DEFINE_string("score_text", None, "--mode=score: UTF-8 text file to report bits per byte on.")
_SCORE_CHOICES = flags.DEFINE_string(
    "score_choices", None, '--mode=score: JSONL file, one {"context": str, "choices": [str, ...], "label": int} per '
    "line, for multiple-choice acc / acc_norm.")
_SCORE_BATCH = flags.DEFINE_integer("score_batch_size", 8, "--mode=score: rows per scoring step.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-process runs not auto-detected.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Process count (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")

flags.mark_flags_as_required(["config", "workdir"])

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a terminated job


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # orbax logs several INFO lines per checkpoint; keep the console to progress, metrics and warnings.
    logging.set_verbosity(logging.WARNING)
  distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  # Import after distributed init: the trainer touches devices at import-free call time only, but
  # keeping jax work after initialize() is the rule jax.distributed requires.
  from hat_jax import score  # pylint: disable=g-import-not-at-top
  from hat_jax.train import checkpoint, run_lock, trainer  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  try:
    return _run_mode(trainer, jax)
  except (FileNotFoundError, FloatingPointError, checkpoint.CheckpointCorruptError, checkpoint.CheckpointSaveError,
          run_lock.WorkdirLockedError, run_lock.LockLostError, score.ScoreInputError) as e:
    # User-facing conditions (no checkpoint to sample, diverged run, damaged checkpoint, failed save, a
    # workdir in use): the message says what to do.
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    return 1


def _run_mode(trainer, jax) -> int:
  config, workdir, mode = _CONFIG.value, _WORKDIR.value, _MODE.value
  if mode == "score":
    if not _SCORE_TEXT.value and not _SCORE_CHOICES.value:
      raise app.UsageError("--mode=score needs --score_text=FILE (bits per byte) and/or --score_choices=FILE "
                           "(multiple choice, JSONL).")
    final = trainer.score(config, workdir, text_file=_SCORE_TEXT.value, choices_file=_SCORE_CHOICES.value,
                          batch_size=_SCORE_BATCH.value)
    if jax.process_index() == 0:
      print("score: " + " ".join(f"{k}={v:.6g}" for k, v in sorted(final.items())), flush=True)
    return 0
  if mode in ("train", "train_and_sample"):
    try:
      final = trainer.train(config, workdir)
    except trainer.Preempted as e:
      logging.warning("%s", e)
      print(str(e), file=sys.stderr, flush=True)
      return PREEMPTED_EXIT_CODE
    if jax.process_index() == 0:
      print("final: " + " ".join(f"{k}={v:.6g}" for k, v in sorted(final.items())), flush=True)
  if mode == "eval":
    final = trainer.evaluate(config, workdir)
    if jax.process_index() == 0:
      print("eval: " + " ".join(f"{k}={v:.6g}" for k, v in sorted(final.items())), flush=True)
  if mode in ("sample", "train_and_sample"):
    text = trainer.generate(config, workdir)
    if jax.process_index() == 0:
      print(text, flush=True)
  return 0


def run() -> None:
  def entry(argv):
    sys.exit(main(argv))

  app.run(entry)


if __name__ == "__main__":
  run()
