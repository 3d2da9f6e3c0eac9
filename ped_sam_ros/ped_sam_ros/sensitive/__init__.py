"""Sensitive content at the edge: detectors, the per-tile policy and the obfuscations.

``types`` (Detection, the Detector protocol), ``detectors`` (Haar, HOG, MTCNN,
BlazeFace, PP-OCR text; :func:`~.detectors.make_detector`), ``policy`` (PolicyConfig,
:func:`~.policy.plan_frame` -> FramePlan), ``obfuscate`` (:func:`~.obfuscate.tile_crops`)
and ``encode`` (PolicyEncoder, the prototype of the policy inside the distributed
encoder).  ROS-free; cv2 and the optional detector packages are imported where used.
"""

from .detectors import DetectorUnavailable, make_detector
from .obfuscate import tile_crops
from .policy import FramePlan, PolicyConfig, PolicyError, TileDecision, objects_seen_whole, plan_frame, prompt_boxes
from .types import Detection, Detector

__all__ = [
    "Detection",
    "Detector",
    "DetectorUnavailable",
    "FramePlan",
    "PolicyConfig",
    "PolicyError",
    "TileDecision",
    "make_detector",
    "objects_seen_whole",
    "plan_frame",
    "prompt_boxes",
    "tile_crops",
]
