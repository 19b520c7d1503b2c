"""Task registry: `config.task` name -> Task class. Imports are lazy so a CLI run only loads its family."""

from __future__ import annotations

import importlib

from hat_jax.train.task import Task

# name -> (module, attribute). Each module also exposes `TASKS` for discoverability.
_TASKS = {
    "hat": ("hat_jax.train.lm_tasks", "HATTask"),
    "bytes": ("hat_jax.train.lm_tasks", "BytesTask"),
    "block_transformer": ("hat_jax.train.block_tasks", "TASKS"),
    "vanilla_lm": ("hat_jax.train.block_tasks", "TASKS"),
    "vqvae": ("hat_jax.train.image_tasks", "TASKS"),
    "var": ("hat_jax.train.image_tasks", "TASKS"),
    "axial": ("hat_jax.train.image_tasks", "TASKS"),
    "raster_ar": ("hat_jax.train.image_tasks", "TASKS"),
}


def task_names() -> list[str]:
  return sorted(_TASKS)


def get_task_class(name: str) -> type[Task]:
  if name not in _TASKS:
    raise ValueError(f"Unknown config.task {name!r}; known tasks: {task_names()}.")
  module_name, attr = _TASKS[name]
  found = getattr(importlib.import_module(module_name), attr)
  return found[name] if attr == "TASKS" else found


def make_task(config) -> Task:
  return get_task_class(config.task)(config)
