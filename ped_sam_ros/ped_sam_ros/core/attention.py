"""SAM's encoder attention through PyTorch's fused ``scaled_dot_product_attention``.

segment_anything's ``Attention`` forms the full ``heads x N x N`` score matrix,
adds the decomposed relative-position terms to it, and soft-maxes it, making
several ``N x N`` temporaries; for a global block (N = 4096 tokens) that is
gigabytes.  Here the same function is computed by SDPA with the relative
position terms passed as its additive mask:

    softmax(scale * q k^T + B) v,   B[i, j] = q_i . Rh[row(i), row(j)] + q_i . Rw[col(i), col(j)]

in chunks of whole grid rows of queries and of heads, so that the mask (and
whatever the kernel keeps per query) is bounded by ``max_chunk_bytes``.  A chunk
takes as many query rows as fit for one head first, then as many heads as fit:
on the CPU, PyTorch's flash kernel re-reads the keys and values for every block
of queries and picks its query block size from the number of queries (32 below
192 queries, 256 from 768 on), so a tall chunk of one head (vit_b global block:
16 rows x 64 = 1024 queries, a 16 MiB mask) runs about 20 % faster than a chunk
of one row across all heads (64 queries, the same mask size) (measured,
2026-12-02, one thread).

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
    """How many query rows of the grid one chunk of ``heads`` heads takes so that its mask fits
    ``max_chunk_bytes`` (at least one, at most the grid)."""
    row_bytes = batch * heads * q_size[1] * k_size[0] * k_size[1] * itemsize
    return max(1, min(q_size[0], max_chunk_bytes // max(row_bytes, 1)))


def chunk_shape(
    batch: int, heads: int, q_size: Tuple[int, int], k_size: Tuple[int, int], itemsize: int, max_chunk_bytes: int
) -> Tuple[int, int]:
    """(query rows, heads) of one chunk: as many rows as fit for one head, then as many heads as fit.

    Taller chunks let the kernel use larger query blocks (fewer passes over the keys and
    values); splitting the heads is what keeps the mask within ``max_chunk_bytes`` meanwhile.
    """
    rows = rows_per_chunk(batch, 1, q_size, k_size, itemsize, max_chunk_bytes)
    chunk_bytes = batch * rows * q_size[1] * k_size[0] * k_size[1] * itemsize
    return rows, max(1, min(heads, max_chunk_bytes // max(chunk_bytes, 1)))


def decomposed_bias(
    q: torch.Tensor, rh: torch.Tensor, rw: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """SAM's relative-position terms for some query rows, as an additive attention mask.

    q: (B, heads, rows, q_w, d) unscaled queries; rh: (rows, k_h, d) and rw:
    (q_w, k_w, d) from ``get_rel_pos``.  Returns (B, heads, rows * q_w, k_h * k_w),
    written into ``out`` (any contiguous tensor of at least that many elements, of q's
    dtype and device) when given: reusing one buffer for every chunk spares a fresh
    allocation per chunk, whose first touch (page faults, zeroed pages) costs as much as
    filling it.
    """
    b, n, rows, qw, _ = q.shape
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", q, rh)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", q, rw)
    kh, kw = rh.shape[1], rw.shape[1]
    if out is None:
        return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, rows * qw, kh * kw)
    mask = out.view(-1)[: b * n * rows * qw * kh * kw].view(b, n, rows, qw, kh, kw)
    torch.add(rel_h[..., :, None], rel_w[..., None, :], out=mask)
    return mask.view(b, n, rows * qw, kh * kw)


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
        n = self.num_heads
        # (3, B, heads, H*W, d): views of one qkv tensor, no copies
        qkv = self.qkv(x).reshape(b, h * w, 3, n, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))
        rh = get_rel_pos(h, h, self.rel_pos_h).to(q.dtype)
        rw = get_rel_pos(w, w, self.rel_pos_w).to(q.dtype)
        q5 = q.unflatten(2, (h, w))
        budget = chunk_budget(self.max_chunk_bytes, q.device)
        rows, heads = chunk_shape(b, n, (h, w), (h, w), q.element_size(), budget)
        if rows >= h and heads >= n:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=decomposed_bias(q5, rh, rw), scale=self.scale)
            return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))
        # token-major output, written chunk by chunk through a (B, heads, H*W, d) view: the
        # (B, H, W, C) input of the projection is then a view of it, not another copy
        out = q.new_empty(b, h * w, n, q.shape[-1])
        out_heads = out.permute(0, 2, 1, 3)
        mask_buf = q.new_empty(b * heads * rows * w * h * w)  # one buffer, refilled for every chunk
        for h0 in range(0, n, heads):
            h1 = min(n, h0 + heads)
            # these heads' keys and values packed (they are strided views of qkv): the kernel reads
            # them once per block of queries, and packed reads measured ~4% faster (vit_b global block)
            k_h, v_h = k[:, h0:h1].contiguous(), v[:, h0:h1].contiguous()
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                mask = decomposed_bias(q5[:, h0:h1, r0:r1], rh[r0:r1], rw, out=mask_buf)
                q_c = q[:, h0:h1, r0 * w : r1 * w].contiguous()
                out_heads[:, h0:h1, r0 * w : r1 * w] = F.scaled_dot_product_attention(
                    q_c, k_h, v_h, attn_mask=mask, scale=self.scale
                )
        return self.proj(out.view(b, h, w, -1))


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
