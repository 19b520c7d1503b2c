"""The repo's top-level packages are installed (pyproject.toml), so scripts under tools/ import `configs`
and `hat_jax` from any directory without patching sys.path."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_configs_and_its_subpackages_import_outside_the_repo(tmp_path):
  # A config file that imports configs.common, and a sweep spec module with its shared helpers.
  code = "import configs.hat, configs.sweeps.common; print(configs.hat.__file__)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                       check=False)
  assert out.returncode == 0, out.stderr + "\n(reinstall: pip install -e '.[test,experiments]')"
  assert out.stdout.strip() == str(ROOT / "configs" / "hat.py")  # the checkout's, editable


def test_no_tool_patches_sys_path():
  patched = [p.name for p in sorted((ROOT / "tools").glob("*.py")) if "sys.path" in p.read_text()]
  assert not patched, f"{patched} patch sys.path; import installed packages instead (pyproject.toml packages)"
