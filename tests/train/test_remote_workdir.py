"""Metric files and checkpoint paths in a remote (gs://) workdir, with gs:// mapped onto a temp dir.
(PNG grids in a gs:// workdir: tests/generate/test_images.py.)"""

from hat_jax.train import checkpoint as ckpt_lib
from hat_jax.train import metrics as metrics_lib
from tests.fakes import fake_gcs



def test_metrics_jsonl_in_a_gs_workdir_is_rewritten_and_resumed(tmp_path, monkeypatch):
  import tensorboardX  # gs:// event files need google-cloud-storage; not what this test is about
  monkeypatch.setattr(tensorboardX, "SummaryWriter", lambda *a, **k: (_ for _ in ()).throw(ImportError()))
  with fake_gcs(tmp_path):
    writer = metrics_lib.MetricWriter("gs://bucket/run", progress=False)
    writer.write(1, "train", {"loss": 2.0})
    writer.write(2, "train", {"loss": 1.5})
    writer.close()
    resumed = metrics_lib.MetricWriter("gs://bucket/run", progress=False)  # a resumed run keeps the old lines
    resumed.write(3, "eval", {"loss": 1.2})
    resumed.close()
    assert [r["step"] for r in metrics_lib.read_jsonl("gs://bucket/run")] == [1, 2, 3]
    assert [r["loss"] for r in metrics_lib.read_jsonl("gs://bucket/run", "train")] == [2.0, 1.5]
  assert (tmp_path / "bucket" / "run" / "metrics.jsonl").exists()  # in the bucket, not in a local "gs:" dir
  assert not (tmp_path / "gs:").exists()


def test_checkpoint_directory_keeps_a_gs_path():
  # os.path.abspath("gs://b/run") is "<cwd>/gs:/b/run": a remote checkpoint directory must stay remote.
  assert ckpt_lib.resolve_directory("gs://bucket/run/checkpoints") == "gs://bucket/run/checkpoints"
  assert ckpt_lib.resolve_directory("runs/x").startswith("/")
