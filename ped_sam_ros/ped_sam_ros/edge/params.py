"""The edge node's parameters: one table, plain validation functions (no ROS).

The ROS node declares each :class:`ParamSpec` with a ``ParameterDescriptor``
built from it (description, range, read_only) and calls
:func:`validate_parameter` from its on-set-parameters callback; the same
functions turn the values into an :class:`~ped_sam_ros.edge.config.EdgeConfig`.
Read-only parameters take effect at start-up; the others may change at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ped_sam_ros.core.codecs import pixel_codec
from ped_sam_ros.core.device import DEVICE_CHOICES, PRECISIONS
from ped_sam_ros.core.geometry import Partition, PartitionError
from ped_sam_ros.core.model import get_geometry, parse_mode
from ped_sam_ros.core.pipeline import FALLBACKS
from ped_sam_ros.core.wire import DEFAULT_PIXEL_CODEC, DEFAULT_TOKEN_FORMAT, TOKEN_DTYPES
from ped_sam_ros.sensitive.policy import CLASS_ACTIONS, DROP_FILLS, PolicyConfig

from .config import AmgOptions, ConfigError, EdgeConfig, parse_assignment, parse_servers, parse_spares

RELIABILITY = ("best_effort", "reliable")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    read_only: bool = True
    choices: Optional[Tuple[str, ...]] = None
    min: Optional[float] = None
    max: Optional[float] = None

    @property
    def kind(self) -> str:
        """bool, int, float, str or str_list (the ROS parameter type)."""
        d = self.default
        if isinstance(d, bool):
            return "bool"
        if isinstance(d, int):
            return "int"
        if isinstance(d, float):
            return "float"
        if isinstance(d, str):
            return "str"
        return "str_list"

    def constraints(self) -> str:
        parts = []
        if self.choices:
            parts.append("one of " + ", ".join(self.choices))
        if self.min is not None or self.max is not None:
            parts.append(
                f"range [{self.min if self.min is not None else '-inf'}, {self.max if self.max is not None else 'inf'}]"
            )
        return "; ".join(parts)


_DEFAULT_SERVERS = [
    "remote-a=tcp://127.0.0.1:5601",
    "remote-b=tcp://127.0.0.1:5602",
    "remote-c=tcp://127.0.0.1:5603",
    "remote-d=tcp://127.0.0.1:5604",
]
_AMG = AmgOptions()  # SAM's own defaults: the one source of the amg.* defaults
#: the amg.* parameters: (AmgOptions field, what it does, min, max); all runtime-changeable
_AMG_PARAMS = (
    ("points_per_side", "grid of point prompts per side.", 1, 128),
    ("points_per_batch", "point prompts decoded together.", 1, 4096),
    ("pred_iou_thresh", "keep masks whose predicted IoU is at least this.", 0.0, 1.0),
    ("stability_score_thresh", "keep masks whose stability score is at least this.", 0.0, 1.0),
    ("stability_score_offset", "logit offset of the stability score.", 0.0, 100.0),
    ("box_nms_thresh", "box IoU above which duplicate masks are suppressed.", 0.0, 1.0),
    ("min_mask_region_area", "remove holes and islands smaller than this many pixels (0: off).", 0, 10**7),
)

PARAMS: List[ParamSpec] = [
    # --- model and split (start-up only)
    ParamSpec(
        "model",
        "vit_b",
        "SAM variant: vit_b, vit_l, vit_h, or a narrow random-weight variant such as "
        "vit_b/w64h2 (width 64, 2 heads; for CPU demos and tests). Must match the remote servers.",
    ),
    ParamSpec(
        "checkpoint",
        "",
        "Path of the official SAM checkpoint (e.g. sam_vit_b_01ec64.pth); the edge loads "
        "only the tensors it runs. Empty only with random_weights.",
    ),
    ParamSpec(
        "random_weights",
        False,
        "Use a randomly initialised model (seed below) instead of a checkpoint: "
        "masks are MEANINGLESS; for demos and tests. The servers must use the same seed.",
    ),
    ParamSpec("seed", 0, "Seed of the random weights (random_weights only).", min=0, max=2**31 - 1),
    ParamSpec(
        "mode",
        "paper",
        "Encoder split: 'paper' (all window blocks remote, global blocks at the edge: an "
        "approximation of SAM), 'exact' (only the blocks before the first global block remote: SAM's "
        "exact output, more edge compute), or 'k<N>' between them: the window blocks of the first N "
        "groups (a group: the window blocks before one global block) remote, k1 = exact, k4 = paper.",
    ),
    ParamSpec(
        "grid",
        "2x2",
        "Partition of SAM's 64x64 token grid into ROWSxCOLS tiles, one remote job each "
        "(1..5 per axis with token-aligned cuts).",
    ),
    ParamSpec(
        "aligned_cuts",
        True,
        "Cut only on SAM's 14-token attention windows (exact window blocks). False "
        "allows even cuts that change the result.",
    ),
    # --- remotes
    ParamSpec(
        "remotes.servers",
        _DEFAULT_SERVERS,
        "Remote encoder servers as NAME=ENDPOINT "
        "(tcp://HOST:PORT or ipc://PATH). NAME appears in diagnostics and names the server's key file.",
    ),
    ParamSpec(
        "remotes.assignment",
        "auto",
        "Which server encodes each tile, in row-major tile order, by "
        "index or name (e.g. '0,1,2,3'); 'auto' spreads tiles so that neighbours go to different servers.",
    ),
    ParamSpec("remotes.allow_adjacent", False, "Allow one server to receive two adjacent tiles (privacy policy)."),
    ParamSpec(
        "remotes.max_share",
        1.0,
        "Largest share of a frame's content one server may see (privacy policy); "
        "checked for every frame, whose aspect ratio changes the shares: a frame over it is refused.",
        min=0.01,
        max=1.0,
    ),
    ParamSpec(
        "remotes.connect_timeout",
        10.0,
        "Seconds to wait at start-up for every server's connection "
        "(the node starts anyway and reports unreachable servers).",
        min=0.0,
        max=600.0,
    ),
    ParamSpec(
        "remotes.fallback",
        "fail",
        "What happens to the tiles of a server that fails (deadline, lost connection, error reply, refused "
        "tokens) or is suspect: 'fail' publishes the frame as failed with the reason; 'spare' sends them to "
        "a server of remotes.spares; 'reroute' to another live server; 'edge' computes them here (loads the "
        "servers' stage at start-up). spare/reroute only where max_share and allow_adjacent still hold.",
        choices=FALLBACKS,
    ),
    ParamSpec(
        "remotes.spares",
        "",
        "Servers (names from remotes.servers, comma-separated) that get no tiles unless another fails "
        "(fallback spare or reroute).",
    ),
    ParamSpec(
        "remotes.deadline_floor",
        1.0,
        "Seconds: the shortest per-frame remote deadline. Each frame's deadline is max(floor, "
        "deadline_factor x p95 of the recent round trips), at most `deadline`.",
        min=0.01,
        max=3600.0,
    ),
    ParamSpec(
        "remotes.deadline_factor",
        4.0,
        "Multiple of the recent p95 round trip that a frame's remote deadline allows.",
        min=1.0,
        max=1000.0,
    ),
    ParamSpec(
        "remotes.token_max_abs",
        1.0e4,
        "Largest token magnitude accepted from a server (0: no bound); a reply above it, or with NaN/inf, "
        "is refused like a missed deadline and the server is suspect.",
        min=0.0,
        max=1.0e30,
    ),
    ParamSpec(
        "remotes.token_rms_factor",
        50.0,
        "A tile whose token RMS exceeds this multiple of the median RMS of recent accepted tiles is refused (0: off).",
        min=0.0,
        max=1.0e6,
    ),
    ParamSpec(
        "keys.client_secret",
        "",
        "This edge's CurveZMQ secret key file (NAME.key_secret, made with "
        "ped-sam-keys). Empty: no encryption (allowed for loopback endpoints only).",
    ),
    ParamSpec("keys.server_public_dir", "", "Directory holding each server's public key as SERVER_NAME.key."),
    ParamSpec(
        "wire_precision",
        DEFAULT_TOKEN_FORMAT,
        "Format of the tokens the servers send back: float32, float16, int8, q<bits>g<group> (fixed rate), "
        "e<k> / p<k> (entropy coded; p: with spatial prediction). The default is the smallest format passing "
        "embedding cosine >= 0.999 and point-mask IoU >= 0.98 against float32 tokens (random weights; "
        "docs/wire.md); float32 sends the servers' tokens unchanged.",
        choices=TOKEN_DTYPES,
    ),
    ParamSpec(
        "pixel_codec",
        DEFAULT_PIXEL_CODEC,
        "How each tile's uint8 pixels travel to its server: raw, png[:level] (lossless), jpeg[:quality], "
        "jpeg444[:quality] (full-resolution chroma) or webp[:quality]; servers decode with size limits. "
        "The default passes the same rule against raw pixels (docs/wire.md); raw or png are lossless.",
    ),
    ParamSpec("torch_threads", 0, "Torch CPU threads of the edge (0: torch's default).", min=0, max=256),
    ParamSpec(
        "device",
        "auto",
        "Where the edge stage (its encoder blocks, neck and mask decoder) runs: 'auto' (the first CUDA "
        "device when one is present, else the CPU), 'cpu', 'cuda' or 'cuda:N'. A CUDA device that is "
        "not there is an error at start-up.",
    ),
    ParamSpec(
        "precision",
        "float32",
        "Float precision of the edge's encoder blocks (the neck and decoder stay float32). float16 on "
        "the CPU, or bfloat16 on a GPU without bf16, is refused unless precision_fallback.",
        choices=tuple(PRECISIONS),
    ),
    ParamSpec(
        "compile",
        False,
        "torch.compile the edge's encoder blocks (inductor: needs a C++ compiler on the CPU, Triton on a "
        "GPU); the first frame pays the compilation. Refused where it cannot work unless precision_fallback.",
    ),
    ParamSpec(
        "precision_fallback",
        False,
        "Run float32 (and uncompiled) with a warning, instead of refusing to start, when precision or "
        "compile cannot be used on this device.",
    ),
    ParamSpec(
        "pipelined",
        True,
        "Overlap the next frame's preprocessing and remote stage with this frame's edge encoder and "
        "decoder (latest frame still wins; results in input order, each with its own header).",
    ),
    # --- ROS interface (start-up only)
    ParamSpec(
        "image_qos.reliability",
        "best_effort",
        "Reliability of the image subscriptions (best_effort matches both best-effort and reliable cameras).",
        choices=RELIABILITY,
    ),
    ParamSpec(
        "image_qos.depth",
        5,
        "Queue depth of the image subscriptions (as ROS's sensor-data profile). The "
        "node itself keeps only the latest frame and counts the ones it drops; frames that overflow this "
        "queue before the callback runs are lost uncounted, so keep it above the burst size.",
        min=1,
        max=100,
    ),
    ParamSpec(
        "use_compressed",
        False,
        "Also subscribe to ~/image/compressed (sensor_msgs/CompressedImage, decoded with OpenCV).",
    ),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", min=0.1, max=60.0),
    # --- runtime-changeable
    ParamSpec(
        "deadline",
        30.0,
        "Seconds a frame's remote encoding may take before the frame fails (names the late servers).",
        read_only=False,
        min=0.05,
        max=3600.0,
    ),
    ParamSpec("multimask", True, "Let SAM propose 3 masks per prompt and keep the best-scored one.", read_only=False),
    ParamSpec(
        "automatic",
        False,
        "Segment everything (SAM's automatic mask generator) instead of the held "
        "prompts. A Prompts message also switches this.",
        read_only=False,
    ),
    ParamSpec(
        "max_prompts",
        64,
        "Most objects one Prompts message or service call may ask for.",
        read_only=False,
        min=1,
        max=1024,
    ),
    ParamSpec(
        "max_points_per_prompt",
        64,
        "Most points one object's prompt may have (decoder time grows with them).",
        read_only=False,
        min=1,
        max=100000,
    ),
    ParamSpec(
        "max_points",
        1024,
        "Most points all objects of one Prompts message or service call may have together.",
        read_only=False,
        min=1,
        max=1000000,
    ),
    ParamSpec(
        "max_image_pixels",
        25_000_000,
        "Largest image (height x width) accepted on ~/image, ~/image/compressed (read from the "
        "compressed header before decoding) and the service; bigger ones are refused.",
        read_only=False,
        min=1,
        max=2**31 - 1,
    ),
    ParamSpec("overlay_alpha", 0.5, "Opacity of the masks on ~/overlay.", read_only=False, min=0.0, max=1.0),
    ParamSpec(
        "service_timeout",
        120.0,
        "Seconds the ~/segment service waits for its result.",
        read_only=False,
        min=0.1,
        max=3600.0,
    ),
    # automatic mode (SAM's generator): one spec per AmgOptions field, defaults SAM's own
    *(
        ParamSpec(f"amg.{field}", getattr(_AMG, field), f"Automatic mode: {text}", read_only=False, min=lo, max=hi)
        for field, text, lo, hi in _AMG_PARAMS
    ),
    # --- privacy policy (docs/privacy.md; start-up only)
    ParamSpec(
        "layout",
        "grid",
        "Tiles and their servers: 'grid' (the grid and remotes.assignment above) or 'auto' (per frame "
        "shape, the token-aligned layout and assignment with the smallest largest server share of the "
        "frame's content, no two tiles of one server adjacent unless allowed; core/layout.py).",
        choices=("grid", "auto"),
    ),
    ParamSpec(
        "privacy.detector",
        "none",
        "Sensitive-object detector run on every frame before any tile leaves: none (policy off), "
        "default (MTCNN faces, Haar where facenet-pytorch is missing), or a comma list of mtcnn, "
        "blazeface, haar (faces), hog (people), ppocr (text).",
    ),
    ParamSpec(
        "privacy.face_action",
        "local",
        "What happens to tiles touching a detected face: send (as today), local (the edge computes "
        "the tile: no server sees it; exact mode stays exact), blur/pixelate/noise (the face box "
        "obfuscated before sending), drop (not computed, filled per privacy.drop_fill).",
        choices=CLASS_ACTIONS,
    ),
    ParamSpec(
        "privacy.classes",
        "",
        "Actions for the other classes as CLASS=ACTION pairs, e.g. 'person=blur,text=pixelate' "
        "(actions as for faces; unlisted classes are sent).",
    ),
    ParamSpec(
        "privacy.noise_sigma",
        40.0,
        "Std of the Gaussian noise the 'noise' action adds to a sensitive box (0..255 pixel units).",
        min=0.0,
        max=255.0,
    ),
    ParamSpec(
        "privacy.min_face_px",
        40.0,
        "Smallest face, in pixels of the camera frame, the detector must catch; smaller ones are not "
        "looked for (lower is slower: MTCNN's cost grows as this shrinks; recall measured >= 40 px).",
        min=8.0,
        max=1024.0,
    ),
    ParamSpec(
        "privacy.min_score",
        0.5,
        "Detections scoring below this are ignored by the policy.",
        min=0.0,
        max=1.0,
    ),
    ParamSpec(
        "privacy.drop_outside_roi",
        False,
        "With prompts: tiles outside the region of interest (the prompts' bounding box grown by one "
        "SAM window) are not computed at all (automatic mode: the whole frame is the ROI).",
    ),
    ParamSpec(
        "privacy.drop_fill",
        "blank",
        "Tokens put in place of a dropped tile: blank (an all-padding tile's tokens at that position, "
        "computed once at the edge), mean (the frame's mean computed token) or zeros.",
        choices=DROP_FILLS,
    ),
]

SPECS: Dict[str, ParamSpec] = {p.name: p for p in PARAMS}
RUNTIME_PARAMS = tuple(p.name for p in PARAMS if not p.read_only)


def defaults() -> Dict[str, Any]:
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default) for p in PARAMS}


def _type_ok(spec: ParamSpec, value: Any) -> bool:
    k = spec.kind
    if k == "bool":
        return isinstance(value, bool)
    if k == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if k == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if k == "str":
        return isinstance(value, str)
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def validate_parameter(name: str, value: Any, current: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """Why ``name`` may not take ``value`` (None when it may).

    ``current``: the other parameters' values, for checks that involve two
    (the assignment needs the server list, the grid ``aligned_cuts``).
    """
    spec = SPECS.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    if not _type_ok(spec, value):
        return f"{name} must be of type {spec.kind}, got {type(value).__name__} {value!r}"
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}; got {value!r}"
    if spec.min is not None and value < spec.min:
        return f"{name} must be >= {spec.min}; got {value}"
    if spec.max is not None and value > spec.max:
        return f"{name} must be <= {spec.max}; got {value}"
    if isinstance(value, float) and value != value:
        return f"{name} must be a number, got NaN"
    try:
        if name == "model":
            get_geometry(value)
        elif name == "mode":
            model = (current or {}).get("model", SPECS["model"].default)
            try:
                geom = get_geometry(model)
            except ValueError:
                geom = get_geometry("vit_b")  # the model's own check reports a bad model; G = 4 for all
            parse_mode(value, geom)
        elif name == "device":
            _check_device(value)
        elif name == "pixel_codec":
            pixel_codec(value)
        elif name == "grid":
            aligned = (current or {}).get("aligned_cuts", SPECS["aligned_cuts"].default)
            Partition.parse(value, aligned=bool(aligned))
        elif name == "remotes.servers":
            if not value:
                return "remotes.servers must name at least one server"
            parse_servers(value)
        elif name == "remotes.assignment":
            servers = (current or {}).get("remotes.servers", SPECS["remotes.servers"].default)
            parse_assignment(value, [s.name for s in parse_servers(servers)])
        elif name == "remotes.spares":
            servers = (current or {}).get("remotes.servers", SPECS["remotes.servers"].default)
            parse_spares(value, [s.name for s in parse_servers(servers)])
        elif name == "privacy.classes":
            privacy_actions(value, "send")
        elif name == "privacy.detector":
            probe = EdgeConfig(privacy_detector=value.strip().lower() or "none")
            bad = [e for e in probe.privacy_problems() if e.startswith("privacy.detector")]
            if bad:
                return bad[0]
        elif name == "remotes.fallback" and value == "spare":
            if not str((current or {}).get("remotes.spares", "")).strip():
                return "remotes.fallback 'spare' needs remotes.spares (the servers kept in reserve)"
    except (ValueError, PartitionError) as e:  # ConfigError is a ValueError
        return f"{name}: {e}"
    return None


def _check_device(value: str) -> None:
    """A device spelling (not whether this machine has it: that is checked at start-up)."""
    import torch

    spec = value.strip().lower()
    if spec == "auto":
        return
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise ValueError(f"must be one of {', '.join(DEVICE_CHOICES)}, got {value!r}")


def validate_changes(changes: Mapping[str, Any], current: Mapping[str, Any]) -> Optional[str]:
    """The on-set-parameters check: the first reason to refuse, or None."""
    merged = dict(current)
    merged.update(changes)
    for name, value in changes.items():
        spec = SPECS.get(name)
        if spec is not None and spec.read_only and name in current and current[name] != value:
            return f"{name} is read-only: it takes effect at start-up (restart the node to change it)"
        reason = validate_parameter(name, value, merged)
        if reason:
            return reason
    return None


def config_from_params(values: Mapping[str, Any]) -> EdgeConfig:
    """Parameter values (defaults filled in) -> :class:`EdgeConfig` (not yet validated
    against the files on disk; call ``validate()``)."""
    v = defaults()
    v.update(values)
    bad = [r for r in (validate_parameter(n, v[n], v) for n in SPECS) if r]
    if bad:
        raise ConfigError("invalid parameters:\n  - " + "\n  - ".join(bad))
    servers = parse_servers(v["remotes.servers"])
    return EdgeConfig(
        model=v["model"],
        checkpoint=v["checkpoint"],
        random_weights=v["random_weights"],
        seed=v["seed"],
        mode=v["mode"],
        grid=v["grid"],
        aligned_cuts=v["aligned_cuts"],
        servers=servers,
        assignment=parse_assignment(v["remotes.assignment"], [s.name for s in servers]),
        allow_adjacent=v["remotes.allow_adjacent"],
        max_share=float(v["remotes.max_share"]),
        client_secret_key=v["keys.client_secret"],
        server_public_keys_dir=v["keys.server_public_dir"],
        deadline_s=float(v["deadline"]),
        connect_timeout_s=float(v["remotes.connect_timeout"]),
        wire_precision=v["wire_precision"],
        pixel_codec=v["pixel_codec"],
        multimask=v["multimask"],
        automatic=v["automatic"],
        max_prompts=v["max_prompts"],
        amg=amg_from_params(v),
        torch_threads=v["torch_threads"],
        device=v["device"],
        precision=v["precision"],
        compile=v["compile"],
        precision_fallback=v["precision_fallback"],
        pipelined=v["pipelined"],
        fallback=v["remotes.fallback"],
        spares=parse_spares(v["remotes.spares"], [s.name for s in servers]),
        deadline_floor_s=float(v["remotes.deadline_floor"]),
        deadline_factor=float(v["remotes.deadline_factor"]),
        token_max_abs=float(v["remotes.token_max_abs"]),
        token_rms_factor=float(v["remotes.token_rms_factor"]),
        max_image_pixels=int(v["max_image_pixels"]),
        max_points_per_prompt=int(v["max_points_per_prompt"]),
        max_points=int(v["max_points"]),
        layout=v["layout"],
        privacy_detector=v["privacy.detector"].strip().lower() or "none",
        privacy_actions=privacy_actions(v["privacy.classes"], v["privacy.face_action"]),
        privacy_noise_sigma=float(v["privacy.noise_sigma"]),
        privacy_min_score=float(v["privacy.min_score"]),
        privacy_min_face_px=float(v["privacy.min_face_px"]),
        privacy_drop_outside_roi=v["privacy.drop_outside_roi"],
        privacy_drop_fill=v["privacy.drop_fill"],
    )


def privacy_actions(classes: str, face_action: str) -> Dict[str, str]:
    """``privacy.classes`` ("person=blur,text=pixelate") and ``privacy.face_action`` -> class -> action
    (raises ValueError naming the bad item)."""
    actions = dict(PolicyConfig.parse(classes).actions)
    if "face" in actions:
        raise ValueError("set the face action with privacy.face_action, not in privacy.classes")
    actions["face"] = face_action
    PolicyConfig(actions=actions)
    return actions


def amg_from_params(values: Mapping[str, Any]) -> AmgOptions:
    v = defaults()
    v.update(values)
    cast = {"int": int, "float": float}
    return AmgOptions(**{field: cast[SPECS[f"amg.{field}"].kind](v[f"amg.{field}"]) for field, *_ in _AMG_PARAMS})


def markdown_table(specs: Sequence[ParamSpec] = PARAMS) -> str:
    """The parameter table of docs/ros.md (kept in sync by a test)."""
    rows = ["| name | type | default | runtime | constraints | description |", "|---|---|---|---|---|---|"]
    for p in specs:
        default = ", ".join(p.default) if isinstance(p.default, list) else repr(p.default)
        if isinstance(p.default, list):
            default = "[" + default + "]"
        rows.append(
            f"| `{p.name}` | {p.kind} | `{default}` | {'no' if p.read_only else 'yes'} | "
            f"{p.constraints()} | {p.description} |"
        )
    return "\n".join(rows)
