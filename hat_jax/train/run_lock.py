"""One writer per run directory: `<workdir>/run.lock`, held by a training run while it runs.

A second `train` on a live workdir (a rerun while the first still runs is an easy slip) would otherwise
interleave its checkpoints with the first's. The lock is a small JSON object naming its holder (host,
pid, start time, command) and refreshed by a heartbeat thread. Only process 0 of a multi-host run takes
it (the trainer shares the outcome with the other processes), so a run holds it once.

Taking a lock over is safe only when its holder is dead:
  * same host and boot, pid gone (or reused by another process: its start time differs): dead at once;
  * otherwise (another host, or no /proc): dead when its heartbeat is older than `stale_seconds`.
Every change is a compare-and-swap on the lock's version: on gs:// the object's generation
(`if_generation_match`, exact); on a local or shared disk, exclusive creation (`O_EXCL`) and an atomic
rename for take-overs. A holder whose heartbeat finds the lock changed under it has lost it, and the
trainer stops before its next checkpoint rather than write next to another run.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid

LOCK_NAME = "run.lock"


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


class LockLostError(RuntimeError):
  """This run's lock was taken over (its heartbeat stalled past the stale limit)."""


# --- stores: create / read / replace / delete with a version token -------------------------------------


class LocalStore:
  """A lock file on a local or shared disk. The token is the content's hash."""

  def __init__(self, path: str):
    self.path = path

  @staticmethod
  def _token(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

  def create(self, data: bytes) -> str | None:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return None
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    return self._token(data)

  def read(self) -> tuple[bytes, str] | None:
    try:
      with open(self.path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      return None
    return data, self._token(data)

  def replace(self, data: bytes, token: str) -> str | None:
    """Heartbeat: rewrite our own lock if it is still the version we wrote."""
    current = self.read()
    if current is None or current[1] != token:
      return None
    tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, self.path)
    return self._token(data)

  def take_over(self, data: bytes, stale_token: str) -> str | None:
    """Replace a dead holder's lock: move it aside atomically (one taker wins the rename), then create."""
    aside = f"{self.path}.stale-{uuid.uuid4().hex}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return self.create(data)
    with open(aside, "rb") as f:
      moved = f.read()
    if self._token(moved) != stale_token:  # a live lock was written in between: put it back
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
      os.remove(aside)
      return None
    os.remove(aside)
    return self.create(data)

  def delete(self, token: str) -> None:
    current = self.read()
    if current is not None and current[1] == token:
      os.remove(self.path)


def _http_status(e: Exception) -> int | None:
  return getattr(e, "code", None)  # google.api_core errors carry the HTTP status: 412 precondition, 404 missing


class GcsStore:
  """A lock object on Cloud Storage; the token is the object's generation, so every change is an exact
  compare-and-swap (`if_generation_match`; 0 means "does not exist yet")."""

  def __init__(self, url: str, client=None):
    bucket, _, name = url[len("gs://"):].partition("/")
    if client is None:
      try:
        from google.cloud import storage  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError(
            f"A gs:// workdir needs google-cloud-storage for its run lock ({url}): pip install -e '.[tpu]'.") from e
      client = storage.Client()
    self._bucket, self._name = client.bucket(bucket), name

  def _write(self, data: bytes, generation: int) -> str | None:
    blob = self._bucket.blob(self._name)
    try:
      blob.upload_from_string(data, content_type="application/json", if_generation_match=generation)
    except Exception as e:  # pylint: disable=broad-except
      if _http_status(e) == 412:  # someone else's version is there now
        return None
      raise
    return str(blob.generation)

  def create(self, data: bytes) -> str | None:
    return self._write(data, 0)

  def read(self) -> tuple[bytes, str] | None:
    for _ in range(10):
      blob = self._bucket.get_blob(self._name)
      if blob is None:
        return None
      try:
        return blob.download_as_bytes(if_generation_match=blob.generation), str(blob.generation)
      except Exception as e:  # pylint: disable=broad-except
        if _http_status(e) not in (404, 412):  # 404/412: changed between the two calls, read again
          raise
    raise OSError(f"The run lock gs://.../{self._name} keeps changing; retry.")

  def replace(self, data: bytes, token: str) -> str | None:
    return self._write(data, int(token))

  take_over = replace

  def delete(self, token: str) -> None:
    try:
      self._bucket.blob(self._name).delete(if_generation_match=int(token))
    except Exception as e:  # pylint: disable=broad-except
      if _http_status(e) not in (404, 412):
        raise


def store_for(workdir: str):
  path = f"{str(workdir).rstrip('/')}/{LOCK_NAME}"
  if path.startswith("gs://"):
    return GcsStore(path)
  if "://" in path:
    raise ValueError(f"No run lock for {path}: workdirs are local paths or gs://bucket/path.")
  return LocalStore(os.path.abspath(path))


# --- liveness -------------------------------------------------------------------------------------------


def _boot_id() -> str | None:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


def _pid_start_ticks(pid: int) -> int | None:
  """When `pid` started (clock ticks since boot), or None when unknown; tells a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rsplit(")", 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def holder_is_dead(holder: dict, *, now: float, stale_seconds: float) -> tuple[bool, str]:
  """(dead?, why) for the holder a lock file names."""
  boot_id = _boot_id()
  same_machine = boot_id is not None and holder.get("boot_id") == boot_id and holder.get("host") == socket.gethostname()
  if same_machine:
    pid = int(holder.get("pid", -1))
    if not _pid_alive(pid):
      return True, f"pid {pid} is not running on this host"
    if holder.get("pid_start_ticks") is not None and _pid_start_ticks(pid) != holder["pid_start_ticks"]:
      return True, f"pid {pid} now belongs to another process"
    return False, "its process is running"
  age = now - float(holder.get("heartbeat_unix", 0))
  if age > stale_seconds:
    return True, f"its last heartbeat was {age:.0f} s ago (> train.lock_stale_seconds={stale_seconds:g})"
  return False, f"its last heartbeat was {age:.0f} s ago"


def describe(holder: dict) -> str:
  return (f"host {holder.get('host')!r}, pid {holder.get('pid')}, started {holder.get('start_time')}, "
          f"command {holder.get('command')!r}")


# --- the lock -------------------------------------------------------------------------------------------


class RunLock:
  """`with RunLock(workdir, ...):` holds `<workdir>/run.lock` for the block (see the module docstring)."""

  def __init__(self, workdir: str, *, stale_seconds: float = 300.0, heartbeat_seconds: float = 30.0,
               store=None):
    if heartbeat_seconds <= 0 or stale_seconds <= 2 * heartbeat_seconds:
      raise ValueError(
          f"train.lock_stale_seconds={stale_seconds:g} must exceed twice train.lock_heartbeat_seconds="
          f"{heartbeat_seconds:g} (> 0), or a live run's lock could be taken over between two heartbeats.")
    self.workdir = str(workdir)
    self.store = store if store is not None else store_for(self.workdir)
    self.stale_seconds, self.heartbeat_seconds = float(stale_seconds), float(heartbeat_seconds)
    self._token: str | None = None
    self._holder: dict = {}
    self._lost: str | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._mutex = threading.Lock()

  def _content(self) -> bytes:
    self._holder["heartbeat_unix"] = time.time()
    return json.dumps(self._holder, indent=1).encode()

  def acquire(self) -> None:
    now = time.time()
    self._holder = {
        "owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
        "boot_id": _boot_id(), "pid_start_ticks": _pid_start_ticks(os.getpid()),
        "start_time": datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    for _ in range(5):  # each pass either wins, meets a live holder, or lost a race and looks again
      token = self.store.create(self._content())
      if token is not None:
        break
      current = self.store.read()
      if current is None:
        continue
      data, stale_token = current
      try:
        holder = json.loads(data)
      except ValueError:
        holder = {}
      dead, why = holder_is_dead(holder, now=time.time(), stale_seconds=self.stale_seconds) if holder else (
          True, "the lock file is unreadable")
      if not dead:
        raise WorkdirLockedError(
            f"Another run is using {self.workdir}: {describe(holder)} ({why}). Two runs writing one workdir "
            f"would interleave their checkpoints. Wait for it to finish, stop it, or use another --workdir. "
            f"If you are sure it is dead (e.g. its host is gone), delete {self.workdir}/{LOCK_NAME}; "
            f"otherwise it is taken over automatically train.lock_stale_seconds={self.stale_seconds:g} s "
            f"after its last heartbeat.")
      token = self.store.take_over(self._content(), stale_token)
      if token is not None:
        logging.warning("Took over the run lock of a dead run in %s: %s (%s).", self.workdir,
                        describe(holder), why)
        break
    else:
      raise WorkdirLockedError(f"Could not take the run lock in {self.workdir}: it kept changing (another "
                               f"run is starting there). Retry, or use another --workdir.")
    self._token = token
    self._stop.clear()
    self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
    self._thread.start()

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      with self._mutex:
        if self._token is None:
          return
        try:
          token = self.store.replace(self._content(), self._token)
        except OSError as e:  # a transient storage error: try again at the next beat
          logging.warning("Run lock heartbeat failed (%s); retrying.", e)
          continue
        if token is None:
          current = self.store.read()
          holder = json.loads(current[0]) if current else {}
          self._lost = (f"this run's lock on {self.workdir} was taken over by {describe(holder)}"
                        if holder else f"this run's lock on {self.workdir} was removed")
          self._token = None
          return
        self._token = token

  @property
  def lost(self) -> str | None:
    """Why this run no longer holds the lock, or None while it does."""
    return self._lost

  def check(self) -> None:
    """Raise LockLostError if another run took the lock (call before writing into the workdir)."""
    if self._lost is not None:
      raise LockLostError(
          f"Stopped before writing a checkpoint: {self._lost} (this run's heartbeat stalled longer than "
          f"train.lock_stale_seconds={self.stale_seconds:g}). Make sure only one run uses the workdir, then "
          f"rerun the command to resume from its newest checkpoint.")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    with self._mutex:
      if self._token is not None:
        try:
          self.store.delete(self._token)
        except OSError as e:
          if e.errno != errno.ENOENT:
            logging.warning("Could not remove the run lock in %s: %s", self.workdir, e)
        self._token = None

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
