r"""Launch hat_jax on a Cloud TPU pod slice: the same command on every worker (`--worker=all`).

  python tools/launch_tpu.py --tpu=my-v5p-64 --zone=us-east5-a --config=configs/hat.py:small \
      --workdir=gs://my-bucket/runs/hat_small --override=train.steps=20000 --dry-run

prints (and without --dry-run runs) one
  gcloud compute tpus tpu-vm ssh my-v5p-64 --zone=us-east5-a --worker=all --command='<setup> && python3 -m
      hat_jax.main --config=configs/hat.py:small --workdir=gs://... --config.train.steps=20000'

Every worker runs the same program; on a pod slice `jax.distributed.initialize()` finds its peers
from the TPU metadata (`hat_jax.distributed.maybe_initialize`), each host reads its own slice of
the data, and all hosts write one orbax checkpoint to the shared `gs://` workdir (a local path would
give every host a different, partial run directory, so it is refused).

Setup on the workers (skip with --setup=''): clone --repo at --ref into ~/hat_jax (or update it),
then `pip install -e '.[tpu]'` (jax[tpu], plus gcsfs and google-cloud-storage: the gs:// backends of
etils.epath, used by orbax, the metric files and the sweep's workdir checks, and of tensorboardX).
Code must be reachable from the VMs (a pushed branch or tag).

Sweeps (`--sweep=SPEC [--only=RUN,...]`): the workers run `python3 -m hat_jax.sweep --sweep=SPEC
--only=RUN --no-report` instead of hat_jax.main (--config is then the base config, default the spec's
BASE_CONFIG; each --override becomes the sweep's `--override`, applied to every run after the spec's
own keys). `python -m hat_jax.sweep ... --launcher=tpu --print-commands` prints one such launch
per unfinished run; afterwards `hat_jax.sweep --collect` fits the laws from the shared workdir.

Multi-slice (`--num-slices=N`): the slices are N TPU VMs named `<tpu>-0` ... `<tpu>-<N-1>` (as a
queued resource created with `--node-count=N` names them); one ssh command per slice is printed and
run concurrently. The queued resource sets the MEGASCALE_* variables jax needs, and
`--config.mesh.dcn_data=N` is added (unless overridden) so data parallelism spans slices over DCN
while FSDP / tensor parallelism stay inside a slice (see docs/sharding.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess

# The checkout this package is installed from (tools/setup.sh installs it editable): --config and
# --sweep paths are made relative to it, and its 'origin' is the default --repo the workers clone.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = "tools/launch_tpu.py"  # the command line of this module, relative to the repo root


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=CLI, description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tpu", required=True, help="TPU VM (pod slice) name; with --num-slices the name prefix.")
  p.add_argument("--zone", required=True, help="e.g. us-east5-a.")
  p.add_argument("--project", default=None, help="GCP project (default: gcloud's configured project).")
  p.add_argument("--config", default=None, help="Config spec as for hat_jax.main, e.g. configs/hat.py:small "
                 "(required, except with --sweep: the base config, default the spec's BASE_CONFIG).")
  p.add_argument("--workdir", required=True, help="Shared run directory, gs://bucket/path.")
  p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                 help="Config override, repeatable: train.steps=1000 -> --config.train.steps=1000.")
  p.add_argument("--mode", default="train", choices=["train", "eval", "sample", "train_and_sample"])
  p.add_argument("--sweep", default=None, help="Run sweep runs (python -m hat_jax.sweep) instead of "
                 "hat_jax.main: a sweep spec in this checkout, e.g. configs/sweeps/hat_scaling.py.")
  p.add_argument("--only", default=None, help="With --sweep: comma-separated run names (default: every "
                 "unfinished run of the spec, one after another).")
  p.add_argument("--num-slices", type=int, default=1, help="Multi-slice: number of slices (TPU VMs <tpu>-<i>).")
  p.add_argument("--repo", default=None, help="Git URL the workers clone (default: this checkout's origin).")
  p.add_argument("--ref", default="main", help="Branch, tag or commit the workers check out.")
  p.add_argument("--setup", default=None, help="Shell run on each worker before training (default: clone/update "
                 "the repo and pip install it with jax[tpu]); '' skips setup.")
  p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                 help="Environment variable for the training process, repeatable (e.g. LIBTPU_INIT_ARGS=...).")
  p.add_argument("--dry-run", action="store_true", help="Print the gcloud command(s) and exit.")
  return p


def _fail(parser: argparse.ArgumentParser, message: str):
  parser.error(message)  # exits with status 2 and the usage line


def _checkout_path(parser, flag: str, value: str, path: str, example: str) -> str:
  """`path` (relative to the repo root or the current directory, or absolute) relative to the repo
  root: the workers run it inside their own clone."""
  root = os.path.realpath(_ROOT)
  for candidate in (os.path.join(_ROOT, path), path):
    relative = os.path.relpath(os.path.realpath(candidate), root)
    if os.path.isfile(candidate) and relative != os.pardir and not relative.startswith(os.pardir + os.sep):
      return relative
  _fail(parser, f"--{flag}={value}: no file {path!r} in this checkout (the workers run the same path inside the "
                f"repo), e.g. --{flag}={example}.")


def _validate(parser, args) -> list[str]:
  """Checks the arguments and makes --config / --sweep paths repo-relative; returns the overrides
  as KEY=VALUE."""
  if args.sweep:
    args.sweep = _checkout_path(parser, "sweep", args.sweep, args.sweep, "configs/sweeps/hat_scaling.py")
    if args.mode != "train":
      _fail(parser, f"--mode={args.mode} applies to hat_jax.main; a --sweep job always trains (drop --mode).")
  elif args.only:
    _fail(parser, f"--only={args.only} names sweep runs: add --sweep=<spec>, e.g. configs/sweeps/hat_scaling.py.")
  elif not args.config:
    _fail(parser, "--config is required (e.g. --config=configs/hat.py:small), or --sweep=<spec> for sweep runs.")
  if args.config:
    path, sep, arg = args.config.partition(":")
    args.config = _checkout_path(parser, "config", args.config, path, "configs/hat.py:small") + sep + arg
  if not args.workdir.startswith("gs://"):
    _fail(parser, f"--workdir={args.workdir!r} must be a gs:// path: every worker of a pod slice writes to it, "
                  f"and a local directory would differ per host. E.g. --workdir=gs://my-bucket/runs/hat.")
  if args.num_slices < 1:
    _fail(parser, f"--num-slices must be >= 1, got {args.num_slices}.")
  overrides = []
  for item in args.override:
    key, sep, value = item.partition("=")
    key = key.strip().removeprefix("--").removeprefix("config.")
    if not sep or not key or " " in key:
      _fail(parser, f"--override={item!r}: expected KEY=VALUE with a dotted config key, e.g. train.steps=1000.")
    overrides.append(f"{key}={value}")
  for item in args.env:
    name, sep, _ = item.partition("=")
    if not sep or not name.isidentifier():
      _fail(parser, f"--env={item!r}: expected NAME=VALUE, e.g. LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather.")
  if args.setup is None and not args.repo:
    args.repo = _origin_url()
    if not args.repo:
      _fail(parser, "the default worker setup clones the repo, but this checkout has no 'origin' remote: pass "
                    "--repo=<git URL the TPU VMs can reach>, or --setup='<your own setup>' ('' for none).")
  if args.num_slices > 1 and not any(o.startswith("mesh.dcn_data=") for o in overrides):
    overrides.append(f"mesh.dcn_data={args.num_slices}")
  return overrides


def _origin_url() -> str | None:
  try:
    out = subprocess.run(["git", "-C", _ROOT, "remote", "get-url", "origin"], capture_output=True, text=True,
                         check=False, timeout=10)
  except OSError:
    return None
  return out.stdout.strip() or None


def default_setup(repo: str, ref: str) -> str:
  q = shlex.quote
  return (f"(test -d ~/hat_jax || git clone -q {q(repo)} ~/hat_jax) && cd ~/hat_jax && git fetch -q origin && "
          f"git checkout -q {q(ref)} && (git pull -q --ff-only || true) && "
          f"python3 -m pip install -q -e '.[tpu]'")


def worker_command(args, overrides: list[str]) -> str:
  """The shell command every worker runs."""
  q = shlex.quote
  if args.sweep:
    program = ["hat_jax.sweep", *([f"--config={args.config}"] if args.config else []), f"--sweep={args.sweep}",
               f"--workdir={args.workdir}", *([f"--only={args.only}"] if args.only else []), "--no-report",
               *(f"--override={o}" for o in overrides)]
  else:
    program = ["hat_jax.main", f"--config={args.config}", f"--workdir={args.workdir}", f"--mode={args.mode}",
               *(f"--config.{o}" for o in overrides)]
  train = " ".join(["python3", "-m", *(q(a) for a in program)])
  env = " ".join(q(e) for e in args.env)
  train = f"env {env} {train}" if env else train
  setup = default_setup(args.repo, args.ref) if args.setup is None else args.setup
  return f"set -e; {setup} && cd ~/hat_jax && {train}" if setup else f"set -e; cd ~/hat_jax && {train}"


def gcloud_commands(args, overrides: list[str]) -> list[list[str]]:
  names = [args.tpu] if args.num_slices == 1 else [f"{args.tpu}-{i}" for i in range(args.num_slices)]
  command = worker_command(args, overrides)
  out = []
  for name in names:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, f"--zone={args.zone}"]
    if args.project:
      cmd.append(f"--project={args.project}")
    out.append(cmd + ["--worker=all", f"--command={command}"])
  return out


def plan(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[list[str]]]:
  """Parses and checks the arguments (a bad one exits 2 with the usage line); returns them and the
  gcloud command(s)."""
  parser = _parser()
  args = parser.parse_args(argv)
  return args, gcloud_commands(args, _validate(parser, args))


def main(argv: list[str] | None = None) -> int:
  args, commands = plan(argv)
  if args.dry_run:
    for cmd in commands:
      print(shlex.join(cmd))
    return 0
  procs = [subprocess.Popen(cmd) for cmd in commands]  # slices start together; each waits on its workers
  return max(p.wait() for p in procs)

