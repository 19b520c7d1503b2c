"""Scaling-law fits recover known laws, report honest intervals and reject bad input."""

import functools
import json

import numpy as np
import pytest

from hat_jax.scaling import (
    bootstrap,
    fit_chinchilla,
    fit_compute_law,
    fit_power_law,
    flops_6nd,
    held_out_error,
    non_embedding_params,
)
from hat_jax.scaling import plots, report

# Chinchilla's published law (Hoffmann et al. 2022) as ground truth.
CH = dict(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)


def power_law_data(noise, seed=0, E=1.8, x0=2e4, alpha=0.3, n=16):
  rng = np.random.default_rng(seed)
  N = np.geomspace(1e5, 1e9, n)
  L = (E + (x0 / N) ** alpha) * np.exp(rng.normal(0.0, noise, n))
  return N, L


def chinchilla_data(noise, seed=0):
  rng = np.random.default_rng(seed)
  N = np.repeat(np.geomspace(1e7, 3e9, 7), 5)
  D = np.tile(np.geomspace(1e9, 3e11, 5), 7)
  L = CH["E"] + CH["A"] / N ** CH["alpha"] + CH["B"] / D ** CH["beta"]
  return N, D, L * np.exp(rng.normal(0.0, noise, N.shape))


def test_power_law_exact_on_noiseless_data():
  N, L = power_law_data(noise=0.0)
  fit = fit_power_law(N, L)
  assert fit.converged
  assert fit.alpha == pytest.approx(0.3, rel=1e-6)
  assert fit.E == pytest.approx(1.8, rel=1e-6)
  assert fit.x0 == pytest.approx(2e4, rel=1e-4)
  np.testing.assert_allclose(fit.predict(N), L, rtol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_law_recovers_exponent_with_noise(seed):
  N, L = power_law_data(noise=0.005, seed=seed)
  fit = fit_power_law(N, L)
  assert fit.alpha == pytest.approx(0.3, abs=0.03)
  assert fit.E == pytest.approx(1.8, abs=0.03)


def test_power_law_is_robust_to_an_outlier():
  # The Huber loss with a small delta is nearly L1: one diverged run must not drag the exponent.
  N, L = power_law_data(noise=0.0)
  L = L.copy()
  L[5] *= 1.5
  fit = fit_power_law(N, L)
  assert fit.alpha == pytest.approx(0.3, abs=0.01)


def test_compute_law_at_flop_scale_and_pure_power_law():
  # C spans 1e15..1e21 FLOPs: centring the logs keeps the fit well-conditioned.
  C = np.geomspace(1e15, 1e21, 10)
  L = 0.7 + (3e13 / C) ** 0.12
  fit = fit_compute_law(C, L)
  assert fit.variable == "C"
  assert fit.alpha == pytest.approx(0.12, rel=1e-4)
  assert fit.E == pytest.approx(0.7, rel=1e-4)
  # Kaplan / VAR form without an offset.
  pure = fit_power_law(C, (8.8e13 / C) ** 0.076, with_offset=False)
  assert pure.E == 0.0
  assert pure.alpha == pytest.approx(0.076, rel=1e-6)
  assert pure.x0 == pytest.approx(8.8e13, rel=1e-4)


def test_chinchilla_exact_on_noiseless_data():
  N, D, L = chinchilla_data(noise=0.0)
  fit = fit_chinchilla(N, D, L)
  for k, v in CH.items():
    assert fit.params()[k] == pytest.approx(v, rel=1e-4), k
  a, b = fit.allocation_exponents
  assert a == pytest.approx(0.28 / 0.62) and b == pytest.approx(0.34 / 0.62)
  # The compute-optimal point spends exactly C and minimises L along that iso-FLOP line.
  N_opt, D_opt = fit.compute_optimal(1e21)
  assert 6 * N_opt * D_opt == pytest.approx(1e21)
  n_grid = N_opt * np.array([0.8, 1.0, 1.25])
  losses = fit.predict(n_grid, 1e21 / (6 * n_grid))
  assert np.argmin(losses) == 1


def test_chinchilla_recovers_exponents_with_noise():
  N, D, L = chinchilla_data(noise=0.005, seed=3)
  fit = fit_chinchilla(N, D, L)
  assert fit.alpha == pytest.approx(0.34, abs=0.05)
  assert fit.beta == pytest.approx(0.28, abs=0.05)
  assert fit.E == pytest.approx(1.69, abs=0.1)


def test_bootstrap_interval_contains_truth():
  N, L = power_law_data(noise=0.005, seed=4)
  boot = bootstrap(functools.partial(fit_power_law, top_k=4), (N, L), n=20, seed=0, level=0.9)
  assert boot.n_ok + boot.n_failed == 20 and boot.n_ok >= 16
  assert boot.contains("alpha", 0.3) and boot.contains("E", 1.8)
  lo, hi = boot.intervals["alpha"]
  assert 0 < hi - lo < 0.2  # informative, not degenerate
  assert boot.samples["alpha"].shape == (boot.n_ok,)
  # Same seed, same resamples.
  again = bootstrap(functools.partial(fit_power_law, top_k=4), (N, L), n=20, seed=0, level=0.9)
  assert again.intervals == boot.intervals


def test_held_out_error_small_on_noiseless_data():
  N, L = power_law_data(noise=0.0)
  held = held_out_error(fit_power_law, (N, L))
  assert held.index == len(N) - 1 and held.inputs == (N[-1],)
  assert abs(held.relative_error) < 1e-6
  # Chinchilla: "largest" is the largest N*D (compute).
  N, D, L = chinchilla_data(noise=0.0)
  held = held_out_error(fit_chinchilla, (N, D, L))
  assert held.index == int(np.argmax(N * D))
  assert abs(held.relative_error) < 1e-4


@pytest.mark.parametrize("N, L, match", [
    ([1e5, 1e6, 1e7], [3.0, 2.5, 2.2], "at least 4 runs"),
    ([1e5, 1e6, 1e7, 1e8], [3.0, np.nan, 2.2, 2.0], "non-finite"),
    ([1e5, -1e6, 1e7, 1e8], [3.0, 2.5, 2.2, 2.0], "must be > 0"),
    ([1e5, 1e6, 1e7, 1e8], [3.0, 2.5, 0.0, 2.0], "must be > 0"),
    ([1e5, 1e6, 1e7, 1e8], [3.0, 2.5, 2.2], "one value per run"),
    ([1e5, 1e5, 1e6, 1e6], [3.0, 2.9, 2.5, 2.4], "distinct values"),
    ([[1e5, 1e6], [1e7, 1e8]], [3.0, 2.5, 2.2, 2.0], "1-D"),
])
def test_power_law_rejects_bad_input(N, L, match):
  with pytest.raises(ValueError, match=match):
    fit_power_law(N, L)


def test_chinchilla_rejects_bad_input():
  N, D, L = chinchilla_data(noise=0.0)
  with pytest.raises(ValueError, match="at least 6 runs"):
    fit_chinchilla(N[:5], D[:5], L[:5])
  with pytest.raises(ValueError, match="distinct values of D"):
    fit_chinchilla(N, np.full_like(D, 1e10), L)
  with pytest.raises(ValueError, match="grid is missing"):
    fit_chinchilla(N, D, L, grid={"alpha": (0.5,)})
  with pytest.raises(ValueError, match="bootstrap needs n >= 2"):
    bootstrap(fit_chinchilla, (N, D, L), n=1)


def test_flops_and_non_embedding_params():
  assert flops_6nd(1e6, 2e7) == pytest.approx(1.2e14)
  np.testing.assert_allclose(flops_6nd([1e6, 2e6], [1e7, 1e7]), [6e13, 1.2e14])
  with pytest.raises(ValueError, match="must be > 0"):
    flops_6nd(0, 1e7)
  tree = {"params": {
      "embed": {"embedding": np.zeros((256, 64))},
      "backbone": {"layer_0": {"kernel": np.zeros((64, 256)), "bias": np.zeros(256)}},
      "lm_head": {"kernel": np.zeros((64, 256))},
  }}
  assert non_embedding_params(tree) == 64 * 256 + 256 + 64 * 256
  assert non_embedding_params(tree, embedding_paths=("embed", "lm_head")) == 64 * 256 + 256


def test_non_embedding_params_on_a_flax_model():
  import flax.linen as nn
  import jax

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, ids):
      x = nn.Embed(100, 8, name="token_embed")(ids)
      return nn.Dense(8, name="mlp")(x)

  params = Tiny().init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))
  assert non_embedding_params(params) == 8 * 8 + 8


def test_plot_file_is_written(tmp_path):
  N, L = power_law_data(noise=0.0, n=6)
  fit = fit_power_law(N, L, top_k=2)
  path = plots.plot_scaling([plots.Series("hat", N, L, fit, held_out_index=5)],
                            tmp_path / "sub" / "loss_vs_params.png", xlabel="N")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_cli_end_to_end(tmp_path):
  N, D, L = chinchilla_data(noise=0.002, seed=5)
  results = tmp_path / "results.jsonl"
  with open(results, "w") as f:
    for i, (n, d, l) in enumerate(zip(N, D, L)):
      f.write(json.dumps({"name": f"r{i}", "model": "bpe", "params_non_embedding": n, "tokens": d,
                          "val_loss": l}) + "\n")
    f.write("\n")  # a trailing blank line is fine
  out = tmp_path / "report"
  assert report.main(["--results", str(results), "--out", str(out), "--bootstrap", "3",
                      "--top-k", "2"]) == 0
  doc = json.loads((out / "report.json").read_text())
  fits = doc["families"]["bpe"]["fits"]
  assert set(fits) == {"L(N)", "L(C)", "L(N,D)"}
  assert fits["L(N,D)"]["params"]["alpha"] == pytest.approx(0.34, abs=0.05)
  assert "C = 6 N D" in doc["families"]["bpe"]["notes"][0]
  assert "| bpe | L(N,D) | 35 |" in (out / "report.md").read_text()
  assert (out / "loss_vs_params.png").stat().st_size > 0 and (out / "loss_vs_flops.png").exists()


def test_report_rejects_bad_records(tmp_path):
  bad = tmp_path / "r.jsonl"
  bad.write_text('{"name": "a", "params_non_embedding": 1e6}\n')
  with pytest.raises(ValueError, match=r"r.jsonl:1: run 'a' lacks \['val_loss'\]"):
    report.load_results(bad)
  bad.write_text("not json\n")
  with pytest.raises(ValueError, match="not valid JSON"):
    report.load_results(bad)


def test_screened_starts_find_the_same_optimum_as_the_full_grid():
  # top_k only skips L-BFGS runs from poor starting points; it must not change the answer.
  N, L = power_law_data(noise=0.01, seed=7, n=10)
  screened = fit_power_law(N, L, top_k=4)
  full = fit_power_law(N, L, top_k=None)
  assert screened.objective == pytest.approx(full.objective, rel=1e-6)
  assert screened.alpha == pytest.approx(full.alpha, rel=1e-4)
