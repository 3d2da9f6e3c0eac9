"""SAM's image encoder, split into a remote stage and an edge stage.

Both stages are built from segment_anything's own modules (``PatchEmbed``,
``Block``, the encoder's neck, ``PromptEncoder``, ``MaskDecoder``) with the same
parameter names as in ``Sam``, so an official checkpoint loads into them
unchanged; each stage loads only the tensors it owns.

Modes (which encoder blocks run where):

* ``paper``: every window-attention block runs remotely, on its window alone;
  the edge runs the global blocks (in order), then the neck.  This is SAM with
  its global blocks moved to the end: an approximation to measure.
* ``exact``: only the window blocks before the first global block run
  remotely; the edge runs everything from the first global block on, in SAM's
  own order.  With token-aligned cuts the output equals unmodified SAM.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.image_encoder import Block

from .geometry import PATCH_SIZE, TOKEN_GRID, WINDOW_SIZE, Tile

log = logging.getLogger(__name__)

MODES = ("paper", "exact")
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
PROMPT_EMBED_DIM = 256


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the requested model."""


@dataclass(frozen=True)
class SamGeometry:
    """The shape of a SAM ViT encoder (what the checkpoint must match)."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: Tuple[int, ...]
    img_size: int = PATCH_SIZE * TOKEN_GRID
    patch_size: int = PATCH_SIZE
    window_size: int = WINDOW_SIZE
    mlp_ratio: float = 4.0
    out_chans: int = PROMPT_EMBED_DIM

    @property
    def token_grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def spec(self) -> str:
        """A string that :func:`get_geometry` turns back into this geometry."""
        base = OFFICIAL[self.name]
        if (self.embed_dim, self.num_heads) == (base.embed_dim, base.num_heads):
            return self.name
        return f"{self.name}/w{self.embed_dim}h{self.num_heads}"

    @property
    def window_blocks(self) -> Tuple[int, ...]:
        return tuple(i for i in range(self.depth) if i not in self.global_attn_indexes)

    def remote_blocks(self, mode: str) -> Tuple[int, ...]:
        """Blocks a remote server runs on its window, in order."""
        check_mode(mode)
        if mode == "paper":
            return self.window_blocks
        first_global = min(self.global_attn_indexes)
        return tuple(range(first_global))

    def edge_blocks(self, mode: str) -> Tuple[int, ...]:
        """Blocks the edge runs on the merged 64x64 grid, in order."""
        check_mode(mode)
        if mode == "paper":
            return tuple(sorted(self.global_attn_indexes))
        return tuple(range(min(self.global_attn_indexes), self.depth))

    def is_global(self, index: int) -> bool:
        return index in self.global_attn_indexes


OFFICIAL: Dict[str, SamGeometry] = {
    "vit_b": SamGeometry("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamGeometry("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamGeometry("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def get_geometry(spec: Union[str, SamGeometry], embed_dim: Optional[int] = None,
                 num_heads: Optional[int] = None) -> SamGeometry:
    """``"vit_b"``, ``"vit_h"``, or a narrow variant such as ``"vit_b/w32h2"``.

    A narrow variant keeps the official depth and global-block positions and the
    1024-pixel input (64x64 tokens, window 14) with a smaller width: it is what
    tests and CPU evaluations use where the full model is too slow.
    """
    if isinstance(spec, SamGeometry):
        geom = spec
    else:
        m = re.fullmatch(r"(vit_[blh])(?:/w(\d+)h(\d+))?", spec.strip())
        if not m:
            raise ValueError(f"unknown model {spec!r}: use vit_b, vit_l, vit_h or e.g. vit_b/w64h2")
        geom = OFFICIAL[m.group(1)]
        if m.group(2):
            geom = dataclasses.replace(geom, embed_dim=int(m.group(2)), num_heads=int(m.group(3)))
    if embed_dim is not None or num_heads is not None:
        geom = dataclasses.replace(geom, embed_dim=embed_dim or geom.embed_dim,
                                   num_heads=num_heads or geom.num_heads)
    if geom.embed_dim % geom.num_heads:
        raise ValueError(f"embed_dim {geom.embed_dim} is not divisible by num_heads {geom.num_heads}")
    return geom


# ---------------------------------------------------------------------------
# Module construction (segment_anything's classes, SAM's hyper-parameters)


def _norm_layer():
    return partial(nn.LayerNorm, eps=1e-6)


def make_block(geom: SamGeometry, index: int) -> Block:
    """Encoder block ``index`` exactly as ``ImageEncoderViT`` builds it."""
    is_global = geom.is_global(index)
    grid = geom.token_grid
    return Block(
        dim=geom.embed_dim,
        num_heads=geom.num_heads,
        mlp_ratio=geom.mlp_ratio,
        qkv_bias=True,
        norm_layer=_norm_layer(),
        act_layer=nn.GELU,
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=0 if is_global else geom.window_size,
        input_size=(grid, grid),
    )


def _encoder_shell(geom: SamGeometry, depth: int = 0) -> ImageEncoderViT:
    """An ``ImageEncoderViT`` of this geometry (depth 0 gives just embed + neck)."""
    return ImageEncoderViT(
        img_size=geom.img_size,
        patch_size=geom.patch_size,
        embed_dim=geom.embed_dim,
        depth=depth,
        num_heads=geom.num_heads,
        mlp_ratio=geom.mlp_ratio,
        out_chans=geom.out_chans,
        qkv_bias=True,
        norm_layer=_norm_layer(),
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=geom.window_size,
        global_attn_indexes=geom.global_attn_indexes,
    )


def _prompt_encoder(geom: SamGeometry) -> PromptEncoder:
    return PromptEncoder(
        embed_dim=PROMPT_EMBED_DIM,
        image_embedding_size=(geom.token_grid, geom.token_grid),
        input_image_size=(geom.img_size, geom.img_size),
        mask_in_chans=16,
    )


def _mask_decoder() -> MaskDecoder:
    return MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=PROMPT_EMBED_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )


def build_sam(geom: Union[str, SamGeometry], checkpoint: Optional[Union[str, Path]] = None) -> Sam:
    """The whole, unmodified ``Sam`` of this geometry (for baselines and tests)."""
    geom = get_geometry(geom)
    sam = Sam(
        image_encoder=_encoder_shell(geom, depth=geom.depth),
        prompt_encoder=_prompt_encoder(geom),
        mask_decoder=_mask_decoder(),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    sam.eval()
    if checkpoint is not None:
        state = load_state_dict(checkpoint)
        _check_shapes(sam.state_dict(), state, str(checkpoint))
        sam.load_state_dict(state)
    return sam


def random_sam(geom: Union[str, SamGeometry], seed: int = 0, position_scale: float = 0.1) -> Sam:
    """A randomly initialised ``Sam`` whose position tables are not zero.

    SAM initialises ``pos_embed`` and the relative-position tables with zeros;
    random values there make tests sensitive to window placement.
    """
    geom = get_geometry(geom)
    torch.manual_seed(seed)
    sam = build_sam(geom)
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if name == "pos_embed" or "rel_pos" in name:
                p.normal_(0.0, position_scale)
    return sam


def save_checkpoint(sam: Sam, path: Union[str, Path]) -> Path:
    """Save in the official format: a plain ``Sam`` state dict."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


def load_state_dict(path: Union[str, Path]) -> Mapping[str, torch.Tensor]:
    """Load a checkpoint lazily (memory-mapped where the format allows)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path} is not a SAM state dict")
    return state


def _check_shapes(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], src: str,
                  key_map=lambda k: k) -> None:
    missing = [key_map(k) for k in expected if key_map(k) not in state]
    if missing:
        raise CheckpointError(
            f"{src} lacks {len(missing)} tensors this model needs, e.g. {missing[:3]}: "
            f"wrong model type or not a SAM checkpoint"
        )
    for k, v in expected.items():
        got = state[key_map(k)]
        if tuple(got.shape) != tuple(v.shape):
            raise CheckpointError(
                f"{src}: {key_map(k)} has shape {tuple(got.shape)}, the model expects {tuple(v.shape)} "
                f"(wrong model type or width?)"
            )


def infer_geometry(path: Union[str, Path]) -> SamGeometry:
    """Which official model a checkpoint holds (from its encoder's depth and width).

    The number of attention heads is not recorded in the weights, so a checkpoint
    of a non-official width needs an explicit spec such as ``vit_b/w32h2``.
    """
    state = load_state_dict(path)
    try:
        dim = state["image_encoder.patch_embed.proj.weight"].shape[0]
    except KeyError:
        raise CheckpointError(f"{path} has no image encoder") from None
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks."))
    for g in OFFICIAL.values():
        if g.depth == depth:
            if dim != g.embed_dim:
                raise CheckpointError(
                    f"{path}: a {g.name}-layout encoder of width {dim} (official: {g.embed_dim}); its head count "
                    f"cannot be read from the weights: give the model as {g.name}/w{dim}hHEADS")
            return g
    raise CheckpointError(f"{path}: encoder depth {depth} matches no SAM model (12, 24 or 32)")


class _StageBase(nn.Module):
    """Shared checkpoint loading: stage key ``k`` <-> checkpoint key ``prefix(k) + k``."""

    ENCODER_KEYS = ("patch_embed.", "pos_embed", "blocks.", "neck.")

    @classmethod
    def checkpoint_key(cls, key: str) -> str:
        return "image_encoder." + key if key.startswith(cls.ENCODER_KEYS) else key

    def _load_own(self, state: Dict[str, torch.Tensor]) -> None:
        """Load this stage's tensors from a whole-Sam state dict (checkpoint key names)."""
        self.load_state_dict({k: state[self.checkpoint_key(k)] for k in self.state_dict()})

    def load_checkpoint(self, path: Union[str, Path]) -> "_StageBase":
        state = load_state_dict(path)
        _check_shapes(self.state_dict(), state, str(path), self.checkpoint_key)
        self._load_own(state)
        self.checkpoint_path = str(path)
        return self

    def load_random(self, seed: int) -> "_StageBase":
        """This stage's tensors of ``random_sam(geometry, seed)``: the edge and the servers
        given the same seed hold the parts of one random SAM."""
        self._load_own(random_sam(self.geometry, seed=seed).state_dict())
        return self

    def checkpoint_keys(self) -> List[str]:
        return [self.checkpoint_key(k) for k in self.state_dict()]


class RemoteStage(_StageBase):
    """What a remote server runs: patch embedding, its slice of ``pos_embed``,
    and window blocks, on one window of the frame.

    It holds the window blocks of ``paper`` mode, which include those of
    ``exact`` mode, so one server serves both.
    """

    def __init__(self, geom: Union[str, SamGeometry]):
        super().__init__()
        self.geometry = get_geometry(geom)
        shell = _encoder_shell(self.geometry)
        self.patch_embed = shell.patch_embed
        self.pos_embed = shell.pos_embed
        self.blocks = nn.ModuleDict({str(i): make_block(self.geometry, i)
                                     for i in self.geometry.remote_blocks("paper")})
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(3, 1, 1), persistent=False)
        self.checkpoint_path: Optional[str] = None
        self.eval()

    @classmethod
    def from_checkpoint(cls, geom, path) -> "RemoteStage":
        return cls(geom).load_checkpoint(path)

    def normalize(self, pixels: np.ndarray, tile: Tile) -> torch.Tensor:
        """uint8 HxWx3 crop (top-left part of the window) -> normalised, zero-padded 1x3xhxw.

        The crop may be smaller than the tile (or empty) where the tile runs
        into SAM's bottom/right padding; padding is zero after normalisation,
        exactly as ``Sam.preprocess`` pads.
        """
        ph, pw = tile.pixel_shape
        h, w = pixels.shape[:2]
        if pixels.ndim != 3 or pixels.shape[2] != 3 or h > ph or w > pw:
            raise ValueError(f"pixels of shape {pixels.shape} do not fit tile {tile.to_dict()} ({ph}x{pw} px)")
        x = torch.from_numpy(np.require(pixels, np.uint8, ['C', 'W'])).to(self.pixel_mean.device)
        x = x.permute(2, 0, 1).float()
        x = (x - self.pixel_mean) / self.pixel_std
        x = F.pad(x, (0, pw - w, 0, ph - h))
        return x[None]

    @torch.no_grad()
    def forward(self, x: torch.Tensor, tile: Tile, mode: str = "paper") -> torch.Tensor:
        """Normalised 1x3xhxw window -> 1 x h/16 x w/16 x C tokens after the remote blocks."""
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, tile.row0:tile.row1, tile.col0:tile.col1, :]
        for i in self.geometry.remote_blocks(mode):
            x = self.blocks[str(i)](x)
        return x

    def encode_tile(self, pixels: np.ndarray, tile: Tile, mode: str = "paper") -> torch.Tensor:
        """uint8 crop -> (h, w, C) float32 tokens for this window."""
        return self(self.normalize(pixels, tile), tile, mode)[0]


class EdgeStage(_StageBase):
    """What the edge runs: the blocks from the split on, the neck, and SAM's
    prompt encoder and mask decoder."""

    def __init__(self, geom: Union[str, SamGeometry], mode: str = "paper"):
        super().__init__()
        self.geometry = get_geometry(geom)
        self.mode = check_mode(mode)
        self.blocks = nn.ModuleDict({str(i): make_block(self.geometry, i)
                                     for i in self.geometry.edge_blocks(mode)})
        self.neck = _encoder_shell(self.geometry).neck
        self.prompt_encoder = _prompt_encoder(self.geometry)
        self.mask_decoder = _mask_decoder()
        self.checkpoint_path: Optional[str] = None
        self.eval()

    @classmethod
    def from_checkpoint(cls, geom, path, mode: str = "paper") -> "EdgeStage":
        return cls(geom, mode).load_checkpoint(path)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Merged 1x64x64xC tokens -> the 1x256x64x64 image embedding."""
        x = tokens
        for i in self.geometry.edge_blocks(self.mode):
            x = self.blocks[str(i)](x)
        return self.neck(x.permute(0, 3, 1, 2))


class _OffloadedImageEncoder(nn.Module):
    """Stands in for ``Sam.image_encoder`` where the encoder is distributed."""

    def __init__(self, img_size: int):
        super().__init__()
        self.img_size = img_size

    def forward(self, x):  # pragma: no cover - guarded misuse
        raise RuntimeError("this Sam's image encoder is distributed: encode through the pipeline")


def sam_head(edge: EdgeStage) -> Sam:
    """A ``Sam`` sharing the edge stage's prompt encoder and mask decoder, for
    segment_anything's predictor and automatic mask generator."""
    sam = Sam(
        image_encoder=_OffloadedImageEncoder(edge.geometry.img_size),
        prompt_encoder=edge.prompt_encoder,
        mask_decoder=edge.mask_decoder,
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.eval()


@torch.no_grad()
def reordered_encoder(encoder: ImageEncoderViT, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The unpartitioned reference for a mode: SAM's encoder on the whole grid,
    with its blocks run in the order the split runs them (remote, then edge).

    For ``exact`` that is SAM's own order, i.e. ``encoder(x)``; for ``paper``
    every window block first, then the global blocks.
    """
    blocks = list(encoder.blocks)
    if check_mode(mode) == "paper":
        blocks = [b for b in blocks if b.window_size > 0] + [b for b in blocks if b.window_size == 0]
    x = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for blk in blocks:
        x = blk(x)
    return encoder.neck(x.permute(0, 3, 1, 2))
