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
    "hmar": ("hat_jax.train.image_tasks", "TASKS"),
    "axial": ("hat_jax.train.image_tasks", "TASKS"),
    "raster_ar": ("hat_jax.train.image_tasks", "TASKS"),
}


def task_names() -> list[str]:
  return sorted(_TASKS)


def get_task_class(name: str) -> type[Task]:
  """A registered name, or "package.module:ClassName" for a task defined outside this registry."""
  if ":" in name:
    module_name, attr = name.split(":", 1)
    try:
      found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
      raise ValueError(f"config.task {name!r}: cannot import {attr!r} from {module_name!r} ({e}).") from e
    if not (isinstance(found, type) and issubclass(found, Task)):
      raise ValueError(f"config.task {name!r} is not a Task subclass.")
    return found
  if name not in _TASKS:
    raise ValueError(f"Unknown config.task {name!r}; known tasks: {task_names()} "
                     f"(or give 'package.module:TaskClass').")
  module_name, attr = _TASKS[name]
  found = getattr(importlib.import_module(module_name), attr)
  return found[name] if attr == "TASKS" else found


def make_task(config) -> Task:
  return get_task_class(config.task)(config)
