"""One writer per workdir (hat_jax.train.run_lock): a live holder refuses a second run, naming itself; a
dead one (pid gone, pid reused, heartbeat stale) is taken over; a holder that lost its lock stops before
its next checkpoint; the gs:// store does the same with generation preconditions."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import toy_task
from hat_jax.train import run_lock
from hat_jax.train import trainer


def _write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  content = {"owner": "x", "host": socket.gethostname(), "pid": os.getpid(), "boot_id": run_lock._boot_id(),
             "pid_start_ticks": run_lock._pid_start_ticks(os.getpid()), "start_time": "2026-11-29T10:00:00+00:00",
             "heartbeat_unix": time.time(), "command": "python -m hat_jax.main --workdir=x", **holder}
  with open(os.path.join(workdir, run_lock.LOCK_NAME), "w") as f:
    json.dump(content, f)


def test_second_run_on_a_live_workdir_stops_naming_the_first(tmp_path):
  workdir = str(tmp_path)
  with run_lock.RunLock(workdir):
    with pytest.raises(run_lock.WorkdirLockedError) as caught:
      trainer.train(toy_task.single_device_config(), workdir, devices=toy_task.one_device())
  message = str(caught.value)
  assert f"Another run is using {workdir}: host {socket.gethostname()!r}, pid {os.getpid()}, started 20" in message
  assert "its process is running" in message and "Wait for it to finish, stop it, or use another --workdir" in message
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # the second run wrote nothing
  trainer.train(toy_task.single_device_config(steps=4), workdir, devices=toy_task.one_device())  # released
  assert not os.path.exists(os.path.join(workdir, run_lock.LOCK_NAME))


def test_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
  """A real second process holds the lock; while it lives, a run is refused; after SIGKILL (no cleanup,
  the lock file stays) the next run takes the lock over."""
  workdir = str(tmp_path)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom hat_jax.train import run_lock\n"
       f"run_lock.RunLock({workdir!r}).acquire()\nprint('held', flush=True)\ntime.sleep(120)"],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(run_lock.WorkdirLockedError, match=f"pid {holder.pid}, started"):
      run_lock.RunLock(workdir).acquire()
  finally:
    holder.kill()
    holder.wait()
  assert os.path.exists(os.path.join(workdir, run_lock.LOCK_NAME))
  lock = run_lock.RunLock(workdir)
  import logging  # pylint: disable=g-import-not-at-top
  with caplog.at_level(logging.WARNING):
    lock.acquire()
  lock.release()
  assert f"Took over the run lock of a dead run in {workdir}" in caplog.text
  assert f"pid {holder.pid} is not running on this host" in caplog.text


def test_reused_pid_is_dead(tmp_path):
  # Same host and boot, the pid is alive (it is ours) but started at another time: a previous holder whose
  # pid was given to this process (a restarted container often gets the same low pid).
  _write_lock(str(tmp_path), pid_start_ticks=1)
  dead, why = run_lock.holder_is_dead(json.load(open(tmp_path / run_lock.LOCK_NAME)), now=time.time(),
                                      stale_seconds=300)
  assert dead and why == f"pid {os.getpid()} now belongs to another process"


def test_other_host_is_judged_by_its_heartbeat(tmp_path):
  workdir = str(tmp_path)
  _write_lock(workdir, host="tpu-worker-7", pid=12, heartbeat_unix=time.time() - 30)
  with pytest.raises(run_lock.WorkdirLockedError, match=r"host 'tpu-worker-7', pid 12, .*last heartbeat was 30 s ago"):
    run_lock.RunLock(workdir, stale_seconds=300).acquire()
  _write_lock(workdir, host="tpu-worker-7", pid=12, heartbeat_unix=time.time() - 301)
  lock = run_lock.RunLock(workdir, stale_seconds=300)
  lock.acquire()
  assert json.load(open(tmp_path / run_lock.LOCK_NAME))["pid"] == os.getpid()
  lock.release()


def test_unreadable_lock_file_is_taken_over(tmp_path):
  (tmp_path / run_lock.LOCK_NAME).write_bytes(b"\x00garbage")
  with run_lock.RunLock(str(tmp_path)):
    assert json.load(open(tmp_path / run_lock.LOCK_NAME))["pid"] == os.getpid()


def test_heartbeat_refreshes_and_a_lost_lock_stops_the_run(tmp_path):
  workdir = str(tmp_path)
  lock = run_lock.RunLock(workdir, heartbeat_seconds=0.05, stale_seconds=0.2)
  lock.acquire()
  try:
    first = json.load(open(tmp_path / run_lock.LOCK_NAME))["heartbeat_unix"]
    time.sleep(0.3)
    assert json.load(open(tmp_path / run_lock.LOCK_NAME))["heartbeat_unix"] > first
    trainer._check_lock(lock)  # still held: no error
    _write_lock(workdir, host="other-host", pid=99)  # another run took it over
    deadline = time.time() + 5
    while lock.lost is None and time.time() < deadline:
      time.sleep(0.02)
    with pytest.raises(run_lock.LockLostError, match="Stopped before writing a checkpoint: this run's lock on .* was "
                                                     "taken over by host 'other-host', pid 99"):
      trainer._check_lock(lock)
  finally:
    lock.release()
  assert json.load(open(tmp_path / run_lock.LOCK_NAME))["host"] == "other-host"  # release left theirs alone


def test_stale_limit_must_exceed_two_heartbeats(tmp_path):
  with pytest.raises(ValueError, match=r"lock_stale_seconds=50 must exceed twice train.lock_heartbeat_seconds=30"):
    run_lock.RunLock(str(tmp_path), stale_seconds=50, heartbeat_seconds=30)


# --- gs:// ---------------------------------------------------------------------------------------------


class _HttpError(Exception):
  def __init__(self, code):
    super().__init__(f"HTTP {code}")
    self.code = code


class _FakeBucket:
  """Cloud Storage's object semantics for one bucket: every write makes a new generation, and
  if_generation_match (0 = must not exist) fails with HTTP 412."""

  def __init__(self):
    self.objects: dict[str, tuple[bytes, int]] = {}
    self.next_generation = 1000

  def blob(self, name):
    return _FakeBlob(self, name)

  def get_blob(self, name):
    if name not in self.objects:
      return None
    blob = _FakeBlob(self, name)
    blob.generation = self.objects[name][1]
    return blob


class _FakeBlob:
  def __init__(self, bucket, name):
    self.bucket, self.name, self.generation = bucket, name, None

  def _check(self, generation):
    current = self.bucket.objects.get(self.name, (None, 0))[1]
    if generation is not None and generation != current:
      raise _HttpError(412)

  def upload_from_string(self, data, content_type=None, if_generation_match=None):
    self._check(if_generation_match)
    self.bucket.next_generation += 1
    self.generation = self.bucket.next_generation
    self.bucket.objects[self.name] = (bytes(data), self.generation)

  def download_as_bytes(self, if_generation_match=None):
    if self.name not in self.bucket.objects:
      raise _HttpError(404)
    self._check(if_generation_match)
    return self.bucket.objects[self.name][0]

  def delete(self, if_generation_match=None):
    if self.name not in self.bucket.objects:
      raise _HttpError(404)
    self._check(if_generation_match)
    del self.bucket.objects[self.name]


class _FakeClient:
  def __init__(self):
    self.buckets = {}

  def bucket(self, name):
    return self.buckets.setdefault(name, _FakeBucket())


def test_gcs_lock_uses_generation_preconditions():
  client = _FakeClient()
  url = "gs://bucket/runs/hat"
  store = lambda: run_lock.GcsStore(f"{url}/{run_lock.LOCK_NAME}", client=client)  # noqa: E731
  first = run_lock.RunLock(url, store=store(), heartbeat_seconds=0.05, stale_seconds=0.2)
  first.acquire()
  objects = client.bucket("bucket").objects
  assert list(objects) == ["runs/hat/run.lock"]
  generation = objects["runs/hat/run.lock"][1]
  time.sleep(0.2)
  assert objects["runs/hat/run.lock"][1] > generation  # heartbeats rewrite it under the precondition
  second = run_lock.RunLock(url, store=store(), stale_seconds=300)
  with pytest.raises(run_lock.WorkdirLockedError, match=f"host {socket.gethostname()!r}, pid {os.getpid()}"):
    second.acquire()
  first.release()
  assert not objects
  # A stale lock of another host is replaced under its own generation: only one taker wins.
  stale = json.dumps({"host": "tpu-worker-3", "pid": 5, "heartbeat_unix": time.time() - 1000}).encode()
  client.bucket("bucket").blob("runs/hat/run.lock").upload_from_string(stale)
  taker_a = run_lock.RunLock(url, store=store(), stale_seconds=300)
  stale_token = store().read()[1]
  taker_a.acquire()
  assert store().take_over(b"{}", stale_token) is None  # a second taker with the old generation loses
  assert json.loads(objects["runs/hat/run.lock"][0])["pid"] == os.getpid()
  taker_a.release()
  assert not objects
