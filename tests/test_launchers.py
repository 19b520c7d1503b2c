"""hat_jax/launch_tpu.py (CLI tools/launch_tpu.py) and tools/launch_gpu_multinode.sh: dry runs print the
right commands; bad args fail clearly."""

import os
import shlex
import subprocess
import sys

import pytest

from hat_jax import launch_tpu

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_GPU_SCRIPT = os.path.join(_ROOT, "tools", "launch_gpu_multinode.sh")

BASE = ["--tpu=my-v5p-64", "--zone=us-east5-a", "--config=configs/hat.py:small", "--workdir=gs://bucket/runs/hat"]


def test_tpu_dry_run_builds_the_gcloud_command(capsys):
  assert launch_tpu.main(BASE + ["--project=proj", "--override=train.steps=20000",
                                    "--override=config.mesh.fsdp=4",
                                    "--repo=https://example.com/hat_jax.git", "--env=LIBTPU_INIT_ARGS=--x=1", "--dry-run"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  argv = shlex.split(lines[0])
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v5p-64"]
  assert {"--zone=us-east5-a", "--project=proj", "--worker=all"} <= set(argv)
  remote = next(a for a in argv if a.startswith("--command=")).removeprefix("--command=")
  # The remote command is itself valid shell: setup, then training with every override.
  words = shlex.split(remote.replace(";", " ; "))
  assert "https://example.com/hat_jax.git" in words and "'.[tpu]'" in remote
  main_at = words.index("hat_jax.main")
  assert words[main_at - 2:main_at] == ["python3", "-m"]
  assert words[main_at + 1:] == ["--config=configs/hat.py:small", "--workdir=gs://bucket/runs/hat", "--mode=train",
                                 "--config.train.steps=20000", "--config.mesh.fsdp=4"]
  assert "LIBTPU_INIT_ARGS=--x=1" in words


def test_tpu_multislice_and_no_setup(capsys):
  assert launch_tpu.main(BASE + ["--num-slices=2", "--setup=", "--dry-run"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert [shlex.split(line)[5] for line in lines] == ["my-v5p-64-0", "my-v5p-64-1"]
  assert "--config.mesh.dcn_data=2" in lines[0] and "git clone" not in lines[0]


def _remote_words(line: str) -> list[str]:
  """The program the workers run (from 'python3 -m' on) in one printed gcloud command."""
  remote = next(a for a in shlex.split(line) if a.startswith("--command=")).removeprefix("--command=")
  words = shlex.split(remote)
  return words[words.index("python3"):]


def test_tpu_sweep_runs_hat_jax_sweep(capsys):
  sweep_base = ["--tpu=my-v5p-64", "--zone=us-east5-a", "--workdir=gs://bucket/scaling", "--setup=", "--dry-run"]
  # Absolute paths inside the checkout become repo-relative: the workers run them in their own clone.
  assert launch_tpu.main(sweep_base + [f"--sweep={_ROOT}/configs/sweeps/hat_scaling.py", "--only=hat-w32-s150",
                                          "--override=mesh.fsdp=4"]) == 0
  assert _remote_words(capsys.readouterr().out) == [
      "python3", "-m", "hat_jax.sweep", "--sweep=configs/sweeps/hat_scaling.py", "--workdir=gs://bucket/scaling",
      "--only=hat-w32-s150", "--no-report", "--override=mesh.fsdp=4"]
  # --config is the base config there; --only left out runs every unfinished run in turn.
  assert launch_tpu.main(sweep_base + ["--sweep=configs/sweeps/bytes_scaling.py",
                                          "--config=configs/bytes.py:size=tiny"]) == 0
  assert _remote_words(capsys.readouterr().out)[3:] == [
      "--config=configs/bytes.py:size=tiny", "--sweep=configs/sweeps/bytes_scaling.py",
      "--workdir=gs://bucket/scaling", "--no-report"]


@pytest.mark.parametrize("extra, message", [
    (["--workdir=/tmp/run"], "must be a gs:// path"),
    (["--config=configs/nope.py:small"], "no file 'configs/nope.py'"),
    (["--config=/etc/hostname"], "no file '/etc/hostname' in this checkout"),
    (["--override=train.steps"], "expected KEY=VALUE"),
    (["--num-slices=0"], "--num-slices must be >= 1"),
    (["--env=1BAD=x"], "expected NAME=VALUE"),
    (["--only=hat-w32-s150"], "add --sweep=<spec>"),
    (["--sweep=configs/sweeps/nope.py"], "--sweep=configs/sweeps/nope.py: no file"),
    (["--sweep=configs/sweeps/hat_scaling.py", "--mode=eval"], "a --sweep job always trains"),
])
def test_tpu_bad_args_error_clearly(extra, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    launch_tpu.main(BASE + extra + ["--dry-run"])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_tpu_config_required_without_sweep(capsys):
  with pytest.raises(SystemExit):
    launch_tpu.main(["--tpu=t", "--zone=z", "--workdir=gs://b/r", "--setup=", "--dry-run"])
  assert "--config is required" in capsys.readouterr().err


def test_tpu_default_setup_needs_a_repo(monkeypatch, capsys):
  monkeypatch.setattr(launch_tpu, "_origin_url", lambda: None)  # a checkout without an 'origin' remote
  with pytest.raises(SystemExit):
    launch_tpu.main(BASE + ["--dry-run"])
  assert "pass --repo=" in capsys.readouterr().err
  monkeypatch.setattr(launch_tpu, "_origin_url", lambda: "git@example.com:me/hat_jax.git")
  assert launch_tpu.main(BASE + ["--dry-run"]) == 0
  assert "git@example.com:me/hat_jax.git" in capsys.readouterr().out


def test_tpu_cli_runs_from_any_directory(tmp_path, capsys):
  """tools/launch_tpu.py imports hat_jax.launch_tpu (installed, no sys.path patch) and resolves
  repo-relative paths against the checkout, not the current directory."""
  argv = BASE + ["--setup=", "--dry-run"]
  out = subprocess.run([sys.executable, os.path.join(_ROOT, "tools", "launch_tpu.py"), *argv], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60, check=False)
  assert out.returncode == 0, out.stderr
  assert launch_tpu.main(argv) == 0
  assert out.stdout == capsys.readouterr().out  # the same command as from the repo root
  out = subprocess.run([sys.executable, os.path.join(_ROOT, "tools", "launch_tpu.py"), "--help"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60, check=False)
  assert out.returncode == 0 and out.stdout.startswith("usage: tools/launch_tpu.py"), out.stderr


def test_tpu_missing_required_flag(capsys):
  with pytest.raises(SystemExit):
    launch_tpu.main(["--zone=z", "--config=configs/hat.py", "--workdir=gs://b/r"])
  assert "--tpu" in capsys.readouterr().err


def _gpu(*args):
  return subprocess.run(["bash", _GPU_SCRIPT, *args], capture_output=True, text=True, timeout=30, check=False)


def test_gpu_dry_run_one_command_per_node():
  out = _gpu("--hosts=n0,n1,n2", "--config=configs/hat.py:small", "--workdir=/shared/runs/x", "--port=9000",
             "--dry-run", "--", "--config.train.steps=10")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert [shlex.split(line)[1] for line in lines] == ["n0", "n1", "n2"]
  for i, line in enumerate(lines):
    remote = shlex.split(shlex.split(line)[2])
    assert {"JAX_COORDINATOR_ADDRESS=n0:9000", "JAX_NUM_PROCESSES=3", f"JAX_PROCESS_ID={i}"} <= set(remote)
    assert remote[-4:] == ["hat_jax.main", "--config=configs/hat.py:small", "--workdir=/shared/runs/x",
                           "--config.train.steps=10"]


@pytest.mark.parametrize("args, message", [
    (("--config=c", "--workdir=w"), "--hosts"),
    (("--hosts=a", "--workdir=w"), "--config is required"),
    (("--hosts=a", "--config=c", "--workdir=w", "--port=x"), "TCP port"),
    (("--hosts=a", "--config=c", "--workdir=w", "--bogus"), "unknown argument '--bogus'"),
])
def test_gpu_bad_args_error_clearly(args, message):
  out = _gpu(*args, "--dry-run")
  assert out.returncode == 2 and message in out.stderr, out.stderr
