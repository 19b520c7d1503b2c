"""Render tools/aot_compile.py JSON reports as the markdown table of docs/pods.md.

  python tools/aot_table.py docs/aot/*.json              (--train-only: without the decode-step table)

One row per report (the train step; the decode steps go in a second table). Every number comes from the
report; the paper's own step times are added where the paper gives them (HAT Table 4: 256 H100s, batch
1,024 x 16,384 bytes).
"""

from __future__ import annotations

import json
import sys

GIB = 1 << 30
# config -> (seconds per step, what and where): the papers' measured step times.
PAPER_STEP_SECONDS = {
    "configs/hat_paper.py:1b": (0.9, "HAT Table 4, 256 H100"),
    "configs/hat_paper.py:3b": (2.3, "HAT Table 4, 256 H100"),
    "configs/hat_paper.py:7b": (4.5, "HAT Table 4, 256 H100"),
}


def _mesh(mesh: dict) -> str:
  return " x ".join(f"{k}={v}" for k, v in mesh.items() if v > 1) or "1 chip"


def _stacks(stacks: dict) -> str:
  parts = []
  for name, s in stacks.items():
    parts.append(f"{name} {s['layers']}L{' scan' if s['scan'] else ''}{'' if s['remat'] == 'none' else ' remat=' + s['remat']}")
  return "; ".join(parts)


def train_row(r: dict) -> str:
  s = r["steps"][0]
  if s["compiled"]:
    status = "yes" if s["fits"] else "**does not fit**"
  else:
    status = "**does not fit** (XLA)" if s["fits"] is False else f"**no**: {s['error'].splitlines()[0][:120]}"
  peak = "-" if s["peak_bytes"] is None else f"{s['peak_bytes'] / GIB:.1f} / {s['hbm_bytes'] / GIB:.1f}"
  est = "-" if not s["estimated_seconds"] else f"{s['estimated_seconds']:.2f} s"
  mfu = "-" if s["implied_mfu"] is None else f"{100 * s['implied_mfu']:.0f}%"
  paper = PAPER_STEP_SECONDS.get(r.get("config"))
  paper = "-" if paper is None else f"{paper[0]} s ({paper[1]})"
  batch = "x".join(str(d) for d in next(iter(r["batch_shapes"].values())))
  return (f"| `{r.get('config')}` | {r['params'] / 1e9:.2f}B | {r['topology']} ({r['chips']} chips) | {_mesh(r['mesh'])} | "
          f"{batch} | {r['attention_impl']} attention, {r['dtype']} / {r['param_dtype']} params, {_stacks(r['stacks'])} | {status} | {peak} | "
          f"{s['compile_seconds']:.0f} s | {est} | {mfu} | {paper} |")


def decode_rows(r: dict) -> list[str]:
  rows = []
  for s in r["steps"][1:]:
    peak = "-" if s["peak_bytes"] is None else f"{s['peak_bytes'] / GIB:.2f} / {s['hbm_bytes'] / GIB:.1f}"
    ok = "yes" if s["ok"] else ("**does not fit**" if s["fits"] is False else "**no**")
    rows.append(f"| `{r.get('config')}` | {s['name']} | {r['decode_batch']} | {ok} | {peak} | {s['compile_seconds']:.0f} s |")
  return rows


def main(paths: list[str], decode: bool = True) -> str:
  reports = [json.load(open(p)) for p in paths]
  out = ["| config | params | topology | mesh | batch (rows x bytes/tokens) | execution | compiles, fits | "
         "peak / HBM GiB per chip | compile | est. step (roofline) | est. MFU (bound) | paper's step time |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  out += [train_row(r) for r in reports]
  if decode:
    out += ["", "Cached generation steps (one step of each sampler, KV caches of one training row):", "",
            "| config | step | rows | compiles, fits | peak / HBM GiB per chip | compile |", "|---|---|---|---|---|---|"]
    for r in reports:
      out += decode_rows(r)
  out += ["", "Commands:", ""] + [f"- `{r['command']}`" for r in reports]
  return "\n".join(out)


if __name__ == "__main__":
  args = sys.argv[1:]
  print(main([a for a in args if a != "--train-only"], decode="--train-only" not in args))
