"""SAM's encoder attention through PyTorch's fused ``scaled_dot_product_attention``.

segment_anything's ``Attention`` forms the full ``heads x N x N`` score matrix,
adds the decomposed relative-position terms to it, and soft-maxes it, making
several ``N x N`` temporaries; for a global block (N = 4096 tokens) that is
gigabytes.  Here the same function is computed by SDPA with the relative
position terms passed as its additive mask:

    softmax(scale * q k^T + B) v,   B[i, j] = q_i . Rh[row(i), row(j)] + q_i . Rw[col(i), col(j)]

and the queries are processed in chunks of whole grid rows so that the mask
(and whatever the kernel keeps per query) is bounded by ``max_chunk_bytes``.

:class:`FusedAttention` and :class:`FusedBlock` subclass segment_anything's
``Attention`` and ``Block`` without adding or renaming parameters, so official
checkpoints load unchanged; ``impl = "reference"`` switches a module back to
segment_anything's own computation (for tests and the benchmark).
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple, Type

import torch
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos
from torch import nn
from torch.nn import functional as F

#: default bound on one query chunk's additive mask (bytes), by device type.  On the CPU a
#: small chunk keeps the mask in cache: one grid row of queries for vit_b/l/h global blocks
#: in float32 (12-16 MiB), which measured fastest here.  A GPU wants fewer, larger launches.
DEFAULT_CHUNK_BYTES = {"cpu": 16 * 2**20, "cuda": 256 * 2**20}


def chunk_budget(max_chunk_bytes: Optional[int], device: torch.device) -> int:
    """``max_chunk_bytes``, or the default for ``device``'s type when it is None."""
    if max_chunk_bytes is not None:
        return int(max_chunk_bytes)
    return DEFAULT_CHUNK_BYTES.get(device.type, DEFAULT_CHUNK_BYTES["cpu"])


IMPLS = ("fused", "reference")


def rows_per_chunk(
    batch: int, heads: int, q_size: Tuple[int, int], k_size: Tuple[int, int], itemsize: int, max_chunk_bytes: int
) -> int:
    """How many query rows of the grid one chunk takes so that its mask fits ``max_chunk_bytes``."""
    row_bytes = batch * heads * q_size[1] * k_size[0] * k_size[1] * itemsize
    return max(1, min(q_size[0], max_chunk_bytes // max(row_bytes, 1)))


def decomposed_bias(q: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor) -> torch.Tensor:
    """SAM's relative-position terms for some query rows, as an additive attention mask.

    q: (B, heads, rows, q_w, d) unscaled queries; rh: (rows, k_h, d) and rw:
    (q_w, k_w, d) from ``get_rel_pos``.  Returns (B, heads, rows * q_w, k_h * k_w).
    """
    b, n, rows, qw, _ = q.shape
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", q, rh)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", q, rw)
    kh, kw = rh.shape[1], rw.shape[1]
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, rows * qw, kh * kw)


class FusedAttention(Attention):
    """segment_anything's ``Attention`` (same parameters), computed by SDPA in query chunks."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[Tuple[int, int]] = None,
        max_chunk_bytes: Optional[int] = None,
    ) -> None:
        super().__init__(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size,
        )
        self.max_chunk_bytes = max_chunk_bytes  # None: chunk_budget's default for the device
        self.impl = "fused"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl == "reference":
            return super().forward(x)
        b, h, w, _ = x.shape
        # (3, B, heads, H*W, d): views of one qkv tensor, no copies
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        d = q.shape[-1]
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            rh = get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)
            rw = get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
            q5 = q.unflatten(2, (h, w))
            budget = chunk_budget(self.max_chunk_bytes, q.device)
            step = rows_per_chunk(b, self.num_heads, (h, w), (h, w), q.element_size(), budget)
            if step >= h:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=decomposed_bias(q5, rh, rw), scale=self.scale)
            else:
                out = q.new_empty(b, self.num_heads, h * w, d)
                for r0 in range(0, h, step):
                    r1 = min(h, r0 + step)
                    mask = decomposed_bias(q5[:, :, r0:r1], rh[r0:r1], rw)
                    out[:, :, r0 * w : r1 * w] = F.scaled_dot_product_attention(
                        q[:, :, r0 * w : r1 * w], k, v, attn_mask=mask, scale=self.scale
                    )
                    del mask
        x = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(x)


class FusedBlock(Block):
    """segment_anything's ``Block`` (same parameters, same forward) with :class:`FusedAttention`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        act_layer: Type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        input_size: Optional[Tuple[int, int]] = None,
        max_chunk_bytes: Optional[int] = None,
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            norm_layer=norm_layer,
            act_layer=act_layer,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            window_size=window_size,
            input_size=input_size,
        )
        # replaces the reference Attention built above (cheap: stages are built on the meta device)
        self.attn = FusedAttention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size if window_size == 0 else (window_size, window_size),
            max_chunk_bytes=max_chunk_bytes,
        )


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"attention must be one of {IMPLS}, got {impl!r}")
    return impl


def set_attention_impl(modules: Iterable[nn.Module], impl: str) -> int:
    """Switch every :class:`FusedAttention` inside ``modules`` to ``impl``; returns how many."""
    check_impl(impl)
    n = 0
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, FusedAttention):
                sub.impl = impl
                n += 1
    return n
