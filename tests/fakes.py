"""Stand-ins for things tests cannot reach."""

from etils.epath import testing as epath_testing


def fake_gcs(root):
  """etils.epath with gs://... mapped onto the local directory `root` (no GCS access in tests)."""
  def local(original, *args, **kwargs):
    return original(*(f"{root}/{a[len('gs://'):]}" if str(a).startswith("gs://") else a for a in map(str, args)),
                    **kwargs)
  return epath_testing.mock_epath(**{fn: local for fn in ("exists", "isdir", "listdir", "makedirs", "mkdir",
                                                           "open", "replace", "rename", "remove", "glob", "stat")})
