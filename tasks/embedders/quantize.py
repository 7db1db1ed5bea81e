"""Reduced-precision inference for text transformers, chosen per embedder by a name suffix.

- `minilm@int8`, `hf:<model>@int8`: every linear layer in int8 on the CPU (where the int8 kernels are),
  whatever the machine, on fbgemm's dynamic int8 kernel: weights quantised per output channel once,
  inputs as they come, with one scale per token. With fbgemm's own one scale per tensor, a row's vector
  depended on the rows batched with it, and a few tokens with large activations (after the feed-forward
  activation, mostly) left the others a handful of levels: cosine to float32 fell to ~0.987 on short
  texts. Measured on all-MiniLM-L6-v2 over real text (the demo's docstrings): cosine to the float32
  vectors >= 0.99 on every row, kNN label accuracy within a point (`docs/benchmarks.md`). On a CPU
  without VNNI, inputs use 7 bits (fbgemm's saturation guard), which costs accuracy.
- `@fp16`, `@bf16`: weights and activations in half precision, for GPUs (a CPU runs them too, fast only
  where it has bf16 or fp16 instructions).
- no suffix: float32 on every device, so a vector never depends on which machine computed it.

The precision is chosen by the config, never by the device, because it is part of what made the vectors
(a planning process without a GPU and a GPU worker must describe the same vectors): it is recorded in
`EmbedderInfo.precision`, so in the table metadata and in every row's content hash. An int8 table is its
own table (`<source>__<field>__minilm_int8`), and a change of precision re-embeds the whole table into a
new generation rather than mixing vectors of two precisions in one version.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from tasks.embedders.base import ModelLoadError

DEFAULT = "float32"
# suffix -> the precision recorded in EmbedderInfo.precision
PRECISIONS: dict[str, str] = {"int8": "int8-dynamic", "fp16": "float16", "bf16": "bfloat16"}
INT8 = PRECISIONS["int8"]
DTYPES: dict[str, torch.dtype] = {DEFAULT: torch.float32, INT8: torch.float32, "float16": torch.float16,
                                  "bfloat16": torch.bfloat16}


def split_precision(name: str) -> tuple[str, str]:
    """`minilm@int8` -> ("minilm", "int8-dynamic"); a name without a suffix -> (name, "float32")."""
    base, sep, suffix = name.rpartition("@")
    if not sep:
        return name, DEFAULT
    if suffix not in PRECISIONS or not base:
        raise ModelLoadError(f"{name!r}: unknown precision suffix {'@' + suffix!r}; "
                             f"choose from {['@' + s for s in PRECISIONS]} (or none, for float32)")
    return base, PRECISIONS[suffix]


def runs_on_cpu_only(precision: str) -> bool:
    """Whether the precision's kernels exist only on the CPU (dynamic int8)."""
    return precision == INT8


@functools.cache
def has_vnni() -> bool:
    """Whether the CPU multiplies int8 with 32-bit accumulation (AVX-512 VNNI or AVX-VNNI). Without it,
    fbgemm's int8 kernels can saturate unless activations use 7 bits (`reduce_range`)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def channel_scales(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 scale of each output channel (row) of a weight matrix."""
    return weight.abs().amax(dim=1).clamp(min=1e-12) / 127


class Int8Linear(nn.Module):
    """`nn.Linear` in int8 on fbgemm's dynamic kernel: weights quantised per output channel once, the input
    quantised as it comes, with one scale per token (or, with `per_token=False`, fbgemm's one per tensor).

    fbgemm takes a single input range, the tensor's min and max. Per-token scales come from dividing each
    token by its largest magnitude (every row then lies in [-1, 1]) and multiplying the output rows back,
    the bias added after; two extra rows, all +1 and all -1, pin the range at exactly [-1, 1], so a token's
    quantisation, and a row's vector, never depends on the other rows of the batch.
    """

    def __init__(self, linear: nn.Linear, per_token: bool = True) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = channel_scales(weight).double()
        zeros = torch.zeros(len(scales), dtype=torch.long)
        qweight = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
        bias = torch.zeros(weight.shape[0]) if linear.bias is None else linear.bias.detach().float()
        self.per_token = per_token
        self.packed = torch.ops.quantized.linear_prepack(qweight, None if per_token else bias)
        self.register_buffer("bias", bias)
        self.reduce_range = not has_vnni()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.per_token:
            out = torch.ops.quantized.linear_dynamic(x.float(), self.packed, reduce_range=self.reduce_range)
            return out.to(x.dtype)
        rows = x.reshape(-1, x.shape[-1]).float()
        scale = torch.linalg.vector_norm(rows, ord=float("inf"), dim=1, keepdim=True).clamp_(min=1e-12)
        scaled = torch.empty(len(rows) + 2, rows.shape[1])
        torch.div(rows, scale, out=scaled[: len(rows)])
        scaled[-2], scaled[-1] = 1.0, -1.0
        out = torch.ops.quantized.linear_dynamic(scaled, self.packed, reduce_range=self.reduce_range)[: len(rows)]
        return torch.addcmul(self.bias, out, scale).reshape(*x.shape[:-1], -1).to(x.dtype)


def quantize_int8(model: nn.Module) -> nn.Module:
    """The model (on the CPU) with every `nn.Linear` replaced by its int8 version (per-token inputs), in place."""
    model = model.cpu().float()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child))
    return model
