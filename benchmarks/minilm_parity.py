"""Print max |Δ| of minipeft's all-MiniLM-L6-v2 against the stored reference outputs of
transformers' BertModel (tests/fixtures/minilm_reference.npz), float32 and float64.

    PYTHONPATH=$PWD python benchmarks/minilm_parity.py
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as onp

import minipeft as mp
from minipeft.models import minilm as M

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "minilm_reference.npz"


def main():
    with onp.load(FIXTURE, allow_pickle=False) as f:
        r = {k: f[k] for k in f.files}
    x = onp.stack([r["input_ids"], r["token_type_ids"], r["attention_mask"]], axis=1)
    real = r["attention_mask"].astype(bool)
    print(f"reference: {', '.join(r['versions'])}; {x.shape[0]} texts padded to {x.shape[2]} tokens")
    print("| dtype | last hidden (real rows) | pooler output | mean pooling |")
    print("|---|---:|---:|---:|")
    for dtype in ("float32", "float64"):
        params, cfg, _ = M.load(pool="pooler", dtype=dtype)
        trace = {}
        pooled = mp.features(params, x, cfg, trace=trace)
        mean_cfg = dataclasses.replace(cfg, pool="mean")
        mean = mp.features({k: v for k, v in params.items() if k != "pooler"}, x, mean_cfg)
        dh = onp.abs(trace["hidden"][-1] - r[f"hidden_{dtype}"])[real].max()
        print(f"| {dtype} | {dh:.2e} | {onp.abs(pooled - r[f'pooler_{dtype}']).max():.2e} | "
              f"{onp.abs(mean - r[f'mean_{dtype}']).max():.2e} |")


if __name__ == "__main__":
    main()
