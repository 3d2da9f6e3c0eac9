"""The edge runtime without ROS: configuration, parameter table, pipeline
builder and the latest-frame-wins worker. The ROS node (``ped_sam_ros.ros``)
only translates between messages and this package."""

from .builder import EdgePipeline, build_pipeline, local_transport, zmq_transport
from .config import AmgOptions, ConfigError, EdgeConfig, parse_assignment, parse_servers
from .records import ErrorReport, Frame, FrameResult
from .runtime import EdgeRuntime, validate_prompts

__all__ = [
    "AmgOptions",
    "ConfigError",
    "EdgeConfig",
    "EdgePipeline",
    "EdgeRuntime",
    "ErrorReport",
    "Frame",
    "FrameResult",
    "build_pipeline",
    "local_transport",
    "parse_assignment",
    "parse_servers",
    "validate_prompts",
    "zmq_transport",
]
