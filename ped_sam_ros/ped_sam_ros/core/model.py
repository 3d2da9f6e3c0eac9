"""SAM's image encoder, split into a remote stage and an edge stage.

Both stages are built from segment_anything's own modules (``PatchEmbed``,
the encoder's ``Block``/``Attention`` with fused attention, see
:mod:`.attention`, the neck, ``PromptEncoder``, ``MaskDecoder``) with the same
parameter names as in ``Sam``, so an official checkpoint loads into them
unchanged; each stage builds and loads only the tensors it owns (never a whole
SAM first: modules are laid out on the ``meta`` device and materialised on the
target device directly).

Modes (which encoder blocks run where).  A *group* is the run of window blocks
before one global block; a geometry with G global blocks has G groups.  Mode
``k<N>`` offloads the first N groups: the servers run the window blocks of
groups 1..N in order (on their windows alone); the edge runs those groups'
global blocks in order, then every block after group N in SAM's order, then the
neck.

* ``exact`` (= ``k1``): only the window blocks before the first global block
  run remotely; with token-aligned cuts the output equals unmodified SAM.
* ``paper`` (= ``kG``, G = 4 for every official model): every window block runs
  remotely; the edge runs the global blocks.  SAM with its global blocks moved
  to the end: an approximation to measure.
* ``k2`` .. ``k<G-1>``: in between, exact to the reordered reference of
  :func:`reordered_encoder`.

:func:`parse_mode` validates a mode string against a geometry and returns its
canonical name (``k1`` -> ``exact``, ``kG`` -> ``paper``), which is what
stages, servers and the wire use.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.image_encoder import Block
from torch import nn
from torch.nn import functional as F

from .attention import FusedBlock, check_impl, set_attention_impl
from .device import Placement, resolve_placement
from .geometry import PATCH_SIZE, TOKEN_GRID, WINDOW_SIZE, Tile
from .seeded import fill_seeded_

log = logging.getLogger(__name__)

#: the named modes; ``k<N>`` modes lie between them (see :func:`parse_mode`)
MODES = ("paper", "exact")
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
PROMPT_EMBED_DIM = 256
_K_MODE = re.compile(r"k([1-9][0-9]*)")


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the requested model."""


# ---------------------------------------------------------------------------
# Modes


def offload_groups(mode: str, num_groups: int) -> int:
    """How many groups ``mode`` offloads (1 for ``exact``, ``num_groups`` for ``paper``).

    Raises ValueError naming the valid modes for an unknown or out-of-range mode.
    """
    if mode == "exact":
        return 1
    if mode == "paper":
        return num_groups
    m = _K_MODE.fullmatch(mode) if isinstance(mode, str) else None
    if m is None or not 1 <= int(m.group(1)) <= num_groups:
        raise ValueError(
            f"mode must be 'exact', 'paper' or k1..k{num_groups} (groups of window blocks offloaded), got {mode!r}"
        )
    return int(m.group(1))


def mode_name(k: int, num_groups: int) -> str:
    """The canonical name of offloading ``k`` groups: ``exact``, ``k2`` .. ``k<G-1>``, ``paper``."""
    if not 1 <= k <= num_groups:
        raise ValueError(f"k must be in 1..{num_groups}, got {k}")
    return "exact" if k == 1 else "paper" if k == num_groups else f"k{k}"


def split_order(depth: int, global_indexes: Sequence[int], k: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(remote blocks, edge blocks), each in run order, when the first ``k`` groups are offloaded."""
    globals_ = sorted(global_indexes)
    last = globals_[k - 1]
    remote = tuple(i for i in range(last) if i not in globals_)
    edge = tuple(globals_[:k]) + tuple(range(last + 1, depth))
    return remote, edge


# ---------------------------------------------------------------------------
# Geometry


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

    @property
    def num_groups(self) -> int:
        """G: one group of window blocks per global block."""
        return len(self.global_attn_indexes)

    @property
    def modes(self) -> Tuple[str, ...]:
        """Every mode of this geometry, canonical names, from ``exact`` to ``paper``."""
        return tuple(mode_name(k, self.num_groups) for k in range(1, self.num_groups + 1))

    def remote_blocks(self, mode: str) -> Tuple[int, ...]:
        """Blocks a remote server runs on its window, in order."""
        return split_order(self.depth, self.global_attn_indexes, offload_groups(mode, self.num_groups))[0]

    def edge_blocks(self, mode: str) -> Tuple[int, ...]:
        """Blocks the edge runs on the merged 64x64 grid, in order."""
        return split_order(self.depth, self.global_attn_indexes, offload_groups(mode, self.num_groups))[1]

    def is_global(self, index: int) -> bool:
        return index in self.global_attn_indexes


OFFICIAL: Dict[str, SamGeometry] = {
    "vit_b": SamGeometry("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamGeometry("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamGeometry("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
}


def get_geometry(
    spec: Union[str, SamGeometry], embed_dim: Optional[int] = None, num_heads: Optional[int] = None
) -> SamGeometry:
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
        geom = dataclasses.replace(geom, embed_dim=embed_dim or geom.embed_dim, num_heads=num_heads or geom.num_heads)
    if geom.embed_dim % geom.num_heads:
        raise ValueError(f"embed_dim {geom.embed_dim} is not divisible by num_heads {geom.num_heads}")
    return geom


def parse_mode(mode: str, geom: Union[str, SamGeometry]) -> str:
    """Validate ``mode`` (``exact``, ``paper`` or ``k<N>``) for a geometry; its canonical name.

    ``k1`` becomes ``exact`` and ``k<G>`` becomes ``paper`` (the same blocks in
    the same places), so one configuration has one name on the wire and in logs.
    """
    g = get_geometry(geom)
    return mode_name(offload_groups(mode, g.num_groups), g.num_groups)


# ---------------------------------------------------------------------------
# Module construction (segment_anything's classes, SAM's hyper-parameters)


def _norm_layer():
    return partial(nn.LayerNorm, eps=1e-6)


def _block_kwargs(geom: SamGeometry, index: int) -> Dict:
    grid = geom.token_grid
    return dict(
        dim=geom.embed_dim,
        num_heads=geom.num_heads,
        mlp_ratio=geom.mlp_ratio,
        qkv_bias=True,
        norm_layer=_norm_layer(),
        act_layer=nn.GELU,
        use_rel_pos=True,
        rel_pos_zero_init=True,
        window_size=0 if geom.is_global(index) else geom.window_size,
        input_size=(grid, grid),
    )


def make_block(geom: SamGeometry, index: int) -> Block:
    """Encoder block ``index`` exactly as ``ImageEncoderViT`` builds it (reference attention)."""
    return Block(**_block_kwargs(geom, index))


def make_fused_block(geom: SamGeometry, index: int, max_chunk_bytes: Optional[int] = None) -> FusedBlock:
    """Encoder block ``index`` with fused attention: same parameters, same function as :func:`make_block`."""
    return FusedBlock(**_block_kwargs(geom, index), max_chunk_bytes=max_chunk_bytes)


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


def _whole_sam(geom: SamGeometry) -> Sam:
    return Sam(
        image_encoder=_encoder_shell(geom, depth=geom.depth),
        prompt_encoder=_prompt_encoder(geom),
        mask_decoder=_mask_decoder(),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def build_sam(geom: Union[str, SamGeometry], checkpoint: Optional[Union[str, Path]] = None) -> Sam:
    """The whole, unmodified ``Sam`` of this geometry (for baselines and tests)."""
    geom = get_geometry(geom)
    sam = _whole_sam(geom)
    sam.eval()
    if checkpoint is not None:
        state = load_state_dict(checkpoint)
        _check_shapes(sam.state_dict(), state, str(checkpoint))
        sam.load_state_dict(state)
    return sam


def random_sam(geom: Union[str, SamGeometry], seed: int = 0, position_scale: float = 0.1) -> Sam:
    """A random-weight ``Sam``: every tensor drawn from (seed, its checkpoint key), see :mod:`.seeded`.

    Stages built with the same seed (:meth:`_StageBase.load_random`) hold exactly
    these tensors.  SAM initialises ``pos_embed`` and the relative-position
    tables with zeros; here they are N(0, ``position_scale``), which makes tests
    sensitive to window placement.
    """
    geom = get_geometry(geom)
    with torch.device("meta"):
        sam = _whole_sam(geom)
    sam.to_empty(device="cpu")
    fill_seeded_(sam, seed, position_scale=position_scale)
    with torch.no_grad():  # non-persistent buffers are not weights: set them as Sam does
        sam.pixel_mean.copy_(torch.tensor(PIXEL_MEAN).view(-1, 1, 1))
        sam.pixel_std.copy_(torch.tensor(PIXEL_STD).view(-1, 1, 1))
    return sam.eval()


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


def _check_shapes(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], src: str, key_map=lambda k: k
) -> None:
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
                    f"cannot be read from the weights: give the model as {g.name}/w{dim}hHEADS"
                )
            return g
    raise CheckpointError(f"{path}: encoder depth {depth} matches no SAM model (12, 24 or 32)")


class _StageBase(nn.Module):
    """What every stage shares: where it runs, its weights, and how its blocks are run.

    Stage key ``k`` <-> checkpoint key ``checkpoint_key(k)``.  Modules are laid out
    on the ``meta`` device and materialised on the placement's device, the
    encoder parts (patch embedding, ``pos_embed``, blocks) in the placement's
    precision, the neck, prompt encoder and mask decoder in float32 (cheap, and
    the neck's LayerNorm2d squares activations, which can overflow float16).
    Weights come from :meth:`load_random` or :meth:`load_checkpoint`, once.
    """

    ENCODER_KEYS = ("patch_embed.", "pos_embed", "blocks.", "neck.")
    #: parts kept in float32 whatever the precision
    FLOAT32_PARTS = ("neck", "prompt_encoder", "mask_decoder")

    def _build(
        self,
        geom: Union[str, SamGeometry],
        layout: Callable[[SamGeometry], Dict[str, Union[nn.Module, nn.Parameter]]],
        *,
        seed: Optional[int],
        device,
        precision,
        allow_fallback: bool,
        compile: Union[bool, str],
    ) -> None:
        """What every stage's constructor does, in one place: resolve the placement, lay out the
        parts ``layout(geometry)`` returns (name -> module or parameter) on the ``meta`` device,
        materialise them on the placement's device and dtypes, draw the random weights once
        (``seed``; None leaves the stage for :meth:`load_checkpoint`), and compile the blocks."""
        self.geometry = get_geometry(geom)
        self.placement: Placement = resolve_placement(device, precision, allow_fallback=allow_fallback)
        if self.placement.fallback:
            log.warning("%s: %s", type(self).__name__, self.placement.fallback)
        #: where the weights came from (a checkpoint path or a random_sam label); None until loaded
        self.weights: Optional[str] = None
        self.checkpoint_path: Optional[str] = None
        self._runners: Dict[int, Callable] = {}
        with torch.device("meta"):
            for name, part in layout(self.geometry).items():
                setattr(self, name, part)
        self._materialize()
        if seed is not None:
            self.load_random(seed)
        if compile:
            from .compiled import compile_blocks

            self._runners = compile_blocks(self.blocks, compile, self.placement.device, allow_fallback=allow_fallback)

    def _materialize(self) -> None:
        """Allocate the meta-built modules on the device (uninitialised) in their dtypes."""
        self.to_empty(device=self.placement.device)
        dtype = self.placement.dtype
        if dtype != torch.float32:
            for name, child in self.named_children():
                if name not in self.FLOAT32_PARTS:
                    child.to(dtype)
            for _, p in self.named_parameters(recurse=False):
                p.data = p.data.to(dtype)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        return self.placement.dtype

    @classmethod
    def checkpoint_key(cls, key: str) -> str:
        return "image_encoder." + key if key.startswith(cls.ENCODER_KEYS) else key

    def _load_own(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy this stage's tensors from a whole-Sam state dict (checkpoint key names), one at a
        time into the stage's own device and dtype."""
        with torch.no_grad():
            for k, t in self.state_dict().items():
                t.copy_(state[self.checkpoint_key(k)])

    def load_checkpoint(self, path: Union[str, Path]) -> _StageBase:
        state = load_state_dict(path)
        _check_shapes(self.state_dict(), state, str(path), self.checkpoint_key)
        self._load_own(state)
        self.checkpoint_path = self.weights = str(path)
        return self

    def load_random(self, seed: int) -> _StageBase:
        """This stage's tensors of ``random_sam(geometry, seed)``: the edge and the servers
        given the same seed hold the parts of one random SAM.  Only this stage's tensors
        are drawn."""
        fill_seeded_(self, seed, key_of=self.checkpoint_key)
        self.weights = f"random_sam('{self.geometry.spec}', seed={seed})"
        return self

    def checkpoint_keys(self) -> List[str]:
        return [self.checkpoint_key(k) for k in self.state_dict()]

    def set_attention(self, impl: str) -> _StageBase:
        """``fused`` (default) or ``reference`` (segment_anything's own attention, for comparisons)."""
        set_attention_impl([self.blocks], check_impl(impl))
        return self

    def _require_weights(self) -> None:
        if self.weights is None:
            raise RuntimeError(f"this {type(self).__name__} has no weights yet: load_checkpoint() or load_random()")

    def run_blocks(self, x: torch.Tensor, indexes: Sequence[int]) -> torch.Tensor:
        """Run blocks ``indexes`` (SAM's numbering) in that order (compiled ones where compiled)."""
        for i in indexes:
            x = self._runners.get(i, self.blocks[str(i)])(x)
        return x

    def _neck(self, x: torch.Tensor) -> torch.Tensor:
        """B x 64 x 64 x C tokens -> B x 256 x 64 x 64 float32 embedding."""
        return self.neck(x.float().permute(0, 3, 1, 2))


class RemoteStage(_StageBase):
    """What a remote server runs: patch embedding, its slice of ``pos_embed``,
    and window blocks, on one window (or a batch of same-shaped windows) of the frame.

    It holds the window blocks of ``paper`` mode, which include those of every
    other mode, so one server serves all modes.

    ``seed`` draws random weights (``random_sam(geom, seed)``'s); ``seed=None``
    leaves the stage empty for :meth:`load_checkpoint`.  ``device``/``precision``/
    ``allow_fallback`` as :func:`.device.resolve_placement`; ``compile`` as
    :func:`.compiled.compile_blocks`; ``max_chunk_bytes`` bounds each attention chunk's mask
    (None: :func:`.attention.chunk_budget`'s default for the device).
    """

    def __init__(
        self,
        geom: Union[str, SamGeometry],
        *,
        seed: Optional[int] = 0,
        device="cpu",
        precision="float32",
        allow_fallback: bool = False,
        compile: Union[bool, str] = False,
        max_chunk_bytes: Optional[int] = None,
    ):
        super().__init__()

        def layout(g: SamGeometry) -> Dict[str, Union[nn.Module, nn.Parameter]]:
            shell = _encoder_shell(g)
            blocks = {str(i): make_fused_block(g, i, max_chunk_bytes) for i in g.remote_blocks("paper")}
            return {"patch_embed": shell.patch_embed, "pos_embed": shell.pos_embed, "blocks": nn.ModuleDict(blocks)}

        self._build(
            geom, layout, seed=seed, device=device, precision=precision, allow_fallback=allow_fallback, compile=compile
        )
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN, device=self.device).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD, device=self.device).view(3, 1, 1), persistent=False)

    @classmethod
    def from_checkpoint(cls, geom, path, **options) -> RemoteStage:
        return cls(geom, seed=None, **options).load_checkpoint(path)

    def normalize(self, pixels: np.ndarray, tile: Tile) -> torch.Tensor:
        """uint8 HxWx3 crop (top-left part of the window) -> normalised, zero-padded 1x3xhxw
        float32 on the stage's device.

        The crop may be smaller than the tile (or empty) where the tile runs
        into SAM's bottom/right padding; padding is zero after normalisation,
        exactly as ``Sam.preprocess`` pads.  The uint8 pixels cross to the device,
        not the 4x larger floats.
        """
        ph, pw = tile.pixel_shape
        h, w = pixels.shape[:2]
        if pixels.ndim != 3 or pixels.shape[2] != 3 or h > ph or w > pw:
            raise ValueError(f"pixels of shape {pixels.shape} do not fit tile {tile.to_dict()} ({ph}x{pw} px)")
        x = torch.from_numpy(np.require(pixels, np.uint8, ["C", "W"])).to(self.device)
        x = x.permute(2, 0, 1).float()
        x = (x - self.pixel_mean) / self.pixel_std
        x = F.pad(x, (0, pw - w, 0, ph - h))
        return x[None]

    @torch.no_grad()
    def forward(self, x: torch.Tensor, tile: Union[Tile, Sequence[Tile]], mode: str = "paper") -> torch.Tensor:
        """Normalised Bx3xhxw windows (one tile, or B tiles of one token shape) -> B x h/16 x w/16 x C
        tokens after the remote blocks, in the stage's device and dtype."""
        self._require_weights()
        tiles = [tile] if isinstance(tile, Tile) else list(tile)
        if len(tiles) != x.shape[0] or len({t.token_shape for t in tiles}) != 1:
            raise ValueError(f"{x.shape[0]} inputs for {len(tiles)} tiles; a batch needs tiles of one token shape")
        x = self.patch_embed(x.to(self.device, self.dtype))
        pos = [self.pos_embed[0, t.row0 : t.row1, t.col0 : t.col1, :] for t in tiles]
        x = x + (pos[0][None] if len(pos) == 1 else torch.stack(pos))
        return self.run_blocks(x, self.geometry.remote_blocks(mode))

    def encode_tile(self, pixels: np.ndarray, tile: Tile, mode: str = "paper") -> torch.Tensor:
        """uint8 crop -> (h, w, C) float32 CPU tokens for this window (what goes on the wire)."""
        return self(self.normalize(pixels, tile), tile, mode)[0].float().cpu()

    def encode_tiles(
        self, items: Sequence[Tuple[np.ndarray, Tile]], mode: str = "paper", max_batch: Optional[int] = None
    ) -> List[torch.Tensor]:
        """Several windows at once: those of one token shape run as one batch (at most
        ``max_batch`` per batch).  Returns (h, w, C) float32 CPU tokens in input order,
        equal (to float rounding) to :meth:`encode_tile` one at a time."""
        groups: Dict[Tuple[int, int], List[int]] = {}
        for n, (_, tile) in enumerate(items):
            groups.setdefault(tuple(tile.token_shape), []).append(n)
        out: List[Optional[torch.Tensor]] = [None] * len(items)
        step = max_batch or len(items) or 1
        for members in groups.values():
            for s in range(0, len(members), step):
                batch = members[s : s + step]
                x = torch.cat([self.normalize(*items[n]) for n in batch])
                y = self(x, [items[n][1] for n in batch], mode).float().cpu()
                for j, n in enumerate(batch):
                    out[n] = y[j]
        return out


class EdgeStage(_StageBase):
    """What the edge runs: the blocks from the split on (see the module doc), the
    neck, and SAM's prompt encoder and mask decoder.

    Options as :class:`RemoteStage`.  ``forward`` takes the merged tokens from
    anywhere (typically CPU float32 from the wire: moved once) and returns the
    float32 embedding on the stage's device, where the decoder runs.
    """

    def __init__(
        self,
        geom: Union[str, SamGeometry],
        mode: str = "paper",
        *,
        seed: Optional[int] = 0,
        device="cpu",
        precision="float32",
        allow_fallback: bool = False,
        compile: Union[bool, str] = False,
        max_chunk_bytes: Optional[int] = None,
    ):
        super().__init__()
        self.mode = parse_mode(mode, geom)

        def layout(g: SamGeometry) -> Dict[str, nn.Module]:
            blocks = {str(i): make_fused_block(g, i, max_chunk_bytes) for i in g.edge_blocks(self.mode)}
            return {
                "blocks": nn.ModuleDict(blocks),
                "neck": _encoder_shell(g).neck,
                "prompt_encoder": _prompt_encoder(g),
                "mask_decoder": _mask_decoder(),
            }

        self._build(
            geom, layout, seed=seed, device=device, precision=precision, allow_fallback=allow_fallback, compile=compile
        )

    @classmethod
    def from_checkpoint(cls, geom, path, mode: str = "paper", **options) -> EdgeStage:
        return cls(geom, mode, seed=None, **options).load_checkpoint(path)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Merged Bx64x64xC tokens -> the Bx256x64x64 float32 image embedding on the stage's device."""
        self._require_weights()
        x = tokens.to(self.device, self.dtype)
        return self._neck(self.run_blocks(x, self.geometry.edge_blocks(self.mode)))


class WholeEncoder(_StageBase):
    """SAM's whole image encoder with fused attention, as one stage (checkpoint keys unchanged).

    The edge-only and cloud baselines, and what the benchmark times edge stages
    on: :meth:`encode_tokens` runs any subset of the blocks then the neck, which
    is exactly what an :class:`EdgeStage` of that mode computes.  Options as
    :class:`RemoteStage`.
    """

    def __init__(
        self,
        geom: Union[str, SamGeometry],
        *,
        seed: Optional[int] = 0,
        device="cpu",
        precision="float32",
        allow_fallback: bool = False,
        compile: Union[bool, str] = False,
        max_chunk_bytes: Optional[int] = None,
    ):
        super().__init__()

        def layout(g: SamGeometry) -> Dict[str, Union[nn.Module, nn.Parameter]]:
            shell = _encoder_shell(g)
            blocks = {str(i): make_fused_block(g, i, max_chunk_bytes) for i in range(g.depth)}
            return {
                "patch_embed": shell.patch_embed,
                "pos_embed": shell.pos_embed,
                "blocks": nn.ModuleDict(blocks),
                "neck": shell.neck,
            }

        self._build(
            geom, layout, seed=seed, device=device, precision=precision, allow_fallback=allow_fallback, compile=compile
        )

    @classmethod
    def from_checkpoint(cls, geom, path, **options) -> WholeEncoder:
        return cls(geom, seed=None, **options).load_checkpoint(path)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised, padded Bx3x1024x1024 image -> Bx64x64xC tokens (patch embedding + pos_embed)."""
        self._require_weights()
        return self.patch_embed(x.to(self.device, self.dtype)) + self.pos_embed

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor, indexes: Sequence[int]) -> torch.Tensor:
        """Blocks ``indexes`` in that order, then the neck: float32 embedding on the device."""
        self._require_weights()
        return self._neck(self.run_blocks(tokens.to(self.device, self.dtype), indexes))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised, padded Bx3x1024x1024 image -> Bx256x64x64 float32 embedding (unmodified SAM)."""
        return self.encode_tokens(self.embed(x), range(self.geometry.depth))


class _OffloadedImageEncoder(nn.Module):
    """Stands in for ``Sam.image_encoder`` where the encoder is distributed."""

    def __init__(self, img_size: int):
        super().__init__()
        self.img_size = img_size

    def forward(self, x):  # pragma: no cover - guarded misuse
        raise RuntimeError("this Sam's image encoder is distributed: encode through the pipeline")


def sam_head(edge: EdgeStage) -> Sam:
    """A ``Sam`` sharing the edge stage's prompt encoder and mask decoder, for
    segment_anything's predictor and automatic mask generator (on the edge's device)."""
    sam = Sam(
        image_encoder=_OffloadedImageEncoder(edge.geometry.img_size),
        prompt_encoder=edge.prompt_encoder,
        mask_decoder=edge.mask_decoder,
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return sam.to(edge.device).eval()


def block_order(encoder: ImageEncoderViT, mode: str) -> List[int]:
    """The order in which the split runs ``encoder``'s blocks for ``mode``: remote, then edge."""
    globals_ = [i for i, b in enumerate(encoder.blocks) if b.window_size == 0]
    remote, edge = split_order(len(encoder.blocks), globals_, offload_groups(mode, len(globals_)))
    return list(remote) + list(edge)


@torch.no_grad()
def reordered_encoder(encoder: ImageEncoderViT, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The unpartitioned reference for a mode: SAM's encoder on the whole grid,
    with its blocks run in the order the split runs them (:func:`block_order`).

    For ``exact`` that is SAM's own order, i.e. ``encoder(x)``; for ``paper``
    every window block first, then the global blocks; for ``k<N>`` the window
    blocks of groups 1..N, their global blocks, then the rest in SAM's order.
    """
    x = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for i in block_order(encoder, mode):
        x = encoder.blocks[i](x)
    return encoder.neck(x.permute(0, 3, 1, 2))
