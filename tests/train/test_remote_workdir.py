"""Metric files and image-task exports in a remote (gs://) workdir, with gs:// mapped onto a temp dir."""

import numpy as np
from hat_jax.train import image_tasks
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


def test_image_exports_in_a_gs_workdir(tmp_path):
  params = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  with fake_gcs(tmp_path):
    image_tasks.save_params("gs://bucket/vq/params.npz", params)
    np.testing.assert_array_equal(image_tasks.load_params("gs://bucket/vq/params.npz")["params"]["w"],
                                  params["params"]["w"])
    image_tasks.write_png("gs://bucket/vq/grid.png", np.zeros((4, 4), np.uint8))
  assert (tmp_path / "bucket" / "vq" / "params.npz").exists()
  assert (tmp_path / "bucket" / "vq" / "grid.png").read_bytes()[:4] == b"\x89PNG"

