"""The PED-SAM edge node: a thin rclpy adapter around :class:`EdgeRuntime`.

Subscribes ``~/image`` (and ``~/image/compressed`` when ``use_compressed``) and
``~/prompts``; serves ``~/segment``; publishes ``~/masks``, ``~/label_mask``,
``~/overlay`` (only while subscribed) and ``/diagnostics``.  Every output
carries its input image's header.  The network and the model run in the
runtime's worker thread; callbacks only convert and hand over.

Threads: the ``~/segment`` service waits for the worker, so it holds an executor
thread per call.  At most :attr:`EdgeNode.max_service_calls` calls wait at a
time (a further call is answered at once: ``busy: N segment requests already
waiting``), and :func:`make_executor` gives the executor that many threads plus
one for each mutually exclusive group (inputs, the diagnostics timer, the
default group with the parameter services), so images, diagnostics and
parameters never wait behind service calls.

Parameters are the only copy of the node's run-time settings: the on-set callback
validates a change (and refuses it whole, with a reason), the post-set callback hands
accepted values to the runtime, and the rest is read where it is used.  A Prompts message's
``automatic`` is applied by setting the ``automatic`` parameter, through the same two steps.

    python -m ped_sam_ros.ros.edge_node --ros-args --params-file config/edge.yaml \\
        -r __ns:=/robot -r ~/image:=/camera/image_raw
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind
from sensor_msgs.msg import CompressedImage, Image

from ped_sam_msgs.msg import Prompts, SegmentationResult
from ped_sam_msgs.srv import SegmentImage
from ped_sam_ros.core.masks import label_image
from ped_sam_ros.edge.builder import build_pipeline
from ped_sam_ros.edge.config import ConfigError, EdgeConfig
from ped_sam_ros.edge.params import PARAMS, SPECS, amg_from_params, config_from_params, validate_changes
from ped_sam_ros.edge.privacy import describe_decisions
from ped_sam_ros.edge.records import ErrorReport, Frame, FrameResult
from ped_sam_ros.edge.runtime import EdgeRuntime, Throttle, check_image_size, validate_prompts
from ped_sam_ros.viz import draw_boxes, overlay

from .convert import (
    UnsupportedImage,
    compressed_size,
    compressed_to_rgb,
    image_to_rgb,
    label_to_image,
    prompts_from_msgs,
    result_to_msg,
    rgb_to_image,
)
from .diagnostics import diagnostic_statuses

NODE_NAME = "edge_node"
OUTPUT_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=5,
)
PROMPTS_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
)
DIAGNOSTICS_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10)
#: ~/segment's requests and responses: ROS's default service depth (10) let DDS overwrite
#: requests (and responses) of a burst before the executor took them, leaving calls unanswered;
#: every call that reaches the node is answered (a result, or "busy" at once)
SERVICE_QOS = QoSProfile(
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
    history=HistoryPolicy.KEEP_LAST,
    depth=256,
)
RANDOM_BANNER = "RANDOM WEIGHTS: masks are meaningless"
#: executor threads besides the ones service calls may hold: the inputs group, the
#: diagnostics timer's group and the default group (parameter services)
OTHER_CALLBACK_THREADS = 3

_PTYPE = {
    "bool": ParameterType.PARAMETER_BOOL,
    "int": ParameterType.PARAMETER_INTEGER,
    "float": ParameterType.PARAMETER_DOUBLE,
    "str": ParameterType.PARAMETER_STRING,
    "str_list": ParameterType.PARAMETER_STRING_ARRAY,
}


def descriptor(spec) -> ParameterDescriptor:
    d = ParameterDescriptor(
        name=spec.name,
        type=_PTYPE[spec.kind],
        description=spec.description,
        read_only=spec.read_only,
        additional_constraints=spec.constraints(),
    )
    if spec.kind == "int" and spec.min is not None and spec.max is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
    elif spec.kind == "float" and spec.min is not None and spec.max is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max), step=0.0)]
    return d


def image_qos(reliability: str, depth: int) -> QoSProfile:
    """Sensor-data style by default: best effort (matches reliable and best-effort
    cameras), volatile, shallow."""
    return QoSProfile(
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
    )


class EdgeNode(Node):
    """See the module docstring; ``transport_factory`` replaces ZeroMQ (tests)."""

    def __init__(self, transport_factory: Optional[Callable] = None, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self._declare_parameters()
        values = self._current_parameters()
        self.config: EdgeConfig = config_from_params(values).validate()
        self._refused_images = 0
        self._last_diag_push = 0.0
        self._diag_lock = threading.Lock()
        self._warned_no_prompts = False
        self._service_lock = threading.Lock()
        self._service_calls = 0  # ~/segment calls holding an executor thread now
        self._closing = threading.Event()  # set on shutdown: waiting service calls return
        self._throttle = Throttle(5.0)  # repeated warnings: one line per kind and 5 s
        log = self.get_logger()
        if self.config.random_weights:
            bar = "!" * 72
            for line in (
                bar,
                f"{RANDOM_BANNER} (model {self.config.model}, seed {self.config.seed}).",
                "Demo/test only. Set checkpoint to a SAM .pth file for real segmentation.",
                bar,
            ):
                log.warning(line)
        log.info(f"building the edge pipeline: {self.config.describe()}")

        config = self.config
        self.runtime = EdgeRuntime(
            lambda: build_pipeline(config, transport_factory=transport_factory),
            on_result=self._on_result,
            on_error=self._on_error,
        )
        t0 = time.monotonic()
        self.runtime.start()
        log.info(f"pipeline ready in {time.monotonic() - t0:.1f} s")
        self.runtime.set_automatic(bool(values["automatic"]))
        #: ~/segment calls that may wait at once (each holds an executor thread); the runtime
        #: queues as many requests (jobs of timed-out calls stay queued, cancelled, until the
        #: worker skips them: then the runtime itself may answer "busy")
        self.max_service_calls = self.runtime.max_requests

        # Outputs
        pub_events = PublisherEventCallbacks(incompatible_qos=self._on_offered_incompatible_qos)
        self.masks_pub = self.create_publisher(SegmentationResult, "~/masks", OUTPUT_QOS, event_callbacks=pub_events)
        self.label_pub = self.create_publisher(Image, "~/label_mask", OUTPUT_QOS, event_callbacks=pub_events)
        self.overlay_pub = self.create_publisher(Image, "~/overlay", OUTPUT_QOS, event_callbacks=pub_events)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)

        # Inputs: short callbacks in one group; the service waits in its own group, on at most
        # max_service_calls threads (make_executor adds threads for the other groups).
        inputs = MutuallyExclusiveCallbackGroup()
        sub_events = SubscriptionEventCallbacks(incompatible_qos=self._on_requested_incompatible_qos)
        qos = image_qos(values["image_qos.reliability"], int(values["image_qos.depth"]))
        self.image_sub = self.create_subscription(
            Image, "~/image", self._on_image, qos, callback_group=inputs, event_callbacks=sub_events
        )
        self.compressed_sub = None
        if values["use_compressed"]:
            self.compressed_sub = self.create_subscription(
                CompressedImage,
                "~/image/compressed",
                self._on_compressed,
                qos,
                callback_group=inputs,
                event_callbacks=sub_events,
            )
        self.prompts_sub = self.create_subscription(
            Prompts, "~/prompts", self._on_prompts, PROMPTS_QOS, callback_group=inputs, event_callbacks=sub_events
        )
        self.segment_srv = self.create_service(
            SegmentImage,
            "~/segment",
            self._on_segment,
            qos_profile=SERVICE_QOS,
            callback_group=ReentrantCallbackGroup(),
        )
        self.diag_timer = self.create_timer(
            float(values["diagnostics_period"]), self._on_diag_timer, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        log.info(
            f"ready: image {self.image_sub.topic_name} ({values['image_qos.reliability']}, depth "
            f"{values['image_qos.depth']}), prompts {self.prompts_sub.topic_name}, "
            f"results {self.masks_pub.topic_name}, service {self.segment_srv.service_name}"
        )

    # ------------------------------------------------------------------ parameters

    def _declare_parameters(self) -> None:
        from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

        for spec in PARAMS:
            try:
                self.declare_parameter(spec.name, spec.default, descriptor(spec))
            except InvalidParameterTypeException as e:
                hint = " (write floats with a decimal point, e.g. 30.0)" if spec.kind == "float" else ""
                raise ConfigError(f"parameter {spec.name} must be of type {spec.kind}{hint}: {e}") from None
            except InvalidParameterValueException as e:
                raise ConfigError(f"parameter {spec.name}: {e} ({spec.constraints()})") from None

    def _current_parameters(self) -> Dict:
        return {name: self.get_parameter(name).value for name in SPECS}

    def _param(self, name: str):
        """A parameter's current value: the parameters are the only copy of the node's settings."""
        return self.get_parameter(name).value

    def _validate_parameters(self, params) -> SetParametersResult:
        """On-set: accept or refuse the change as a whole (nothing is applied here)."""
        changes = {p.name: p.value for p in params}
        reason = validate_changes(changes, self._current_parameters())
        limits = ("max_prompts", "max_points_per_prompt", "max_points")
        if not reason and any(n in changes for n in limits):
            new = {n: int(changes.get(n, self._param(n))) for n in limits}
            try:
                validate_prompts(
                    self.runtime.prompts, new["max_prompts"], new["max_points_per_prompt"], new["max_points"]
                )
            except ValueError as e:
                reason = (
                    f"the prompts held now would be refused ({e}); "
                    "publish a Prompts message within the new limits first"
                )
        if reason:
            self._warn("param", f"parameter change refused: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        """Post-set: hand accepted values to the runtime (``overlay_alpha``, ``service_timeout``
        and ``max_prompts`` are read where they are used)."""
        names = {p.name for p in params}
        values = {p.name: p.value for p in params}
        if "deadline" in names:
            self.runtime.update(deadline_s=float(values["deadline"]))
        if "multimask" in names:
            self.runtime.update(multimask=bool(values["multimask"]))
        if any(n.startswith("amg.") for n in names):
            self.runtime.update(amg=amg_from_params(self._current_parameters()))
        if "automatic" in names:
            self.runtime.set_automatic(bool(values["automatic"]))

    # ---------------------------------------------------------------------- inputs

    def _warn(self, kind: str, text: str) -> None:
        """A warning that may repeat: at most one line per ``kind`` and 5 s, with the count left out."""
        skipped = self._throttle(kind)
        if skipped is not None:
            self.get_logger().warning(text + (f" [{skipped} more since the last one]" if skipped else ""))

    def _check_size(self, height: int, width: int) -> None:
        """UnsupportedImage, with the reason, for an image too large or one SAM cannot take."""
        try:
            check_image_size(height, width, int(self._param("max_image_pixels")))
        except ValueError as e:
            raise UnsupportedImage(str(e)) from None

    def _rgb_of_image(self, msg) -> np.ndarray:
        """A raw image checked at the door (size and shape from its fields, before its data)."""
        self._check_size(int(msg.height), int(msg.width))
        return image_to_rgb(msg)

    def _rgb_of_compressed(self, msg) -> np.ndarray:
        """A compressed image checked at the door: its declared size is read from its header and
        checked before anything is decoded."""
        _fmt, w, h = compressed_size(msg.data)
        self._check_size(h, w)
        return compressed_to_rgb(msg, max_pixels=int(self._param("max_image_pixels")))

    def _refuse(self, what: str, header, reason: str) -> None:
        self._refused_images += 1
        self.get_logger().warning(
            f"refusing {what} (frame_id {header.frame_id!r}, stamp {header.stamp.sec}.{header.stamp.nanosec:09d}): "
            f"{reason} [{self._refused_images} refused so far]",
            throttle_duration_sec=5.0,
        )

    @staticmethod
    def _to_frame(msg, convert: Callable) -> Frame:
        """``convert(msg)`` as a :class:`Frame` with the message's header, stamped with its
        arrival and the conversion's duration (raises what ``convert`` raises)."""
        t0, c0 = time.monotonic(), time.perf_counter()
        rgb = convert(msg)
        return Frame(rgb, msg.header, received=t0, convert_s=time.perf_counter() - c0)

    def _on_image(self, msg: Image) -> None:
        try:
            frame = self._to_frame(msg, self._rgb_of_image)
        except (UnsupportedImage, ValueError) as e:
            self._refuse("image", msg.header, str(e))
            return
        self.runtime.submit(frame)

    def _on_compressed(self, msg: CompressedImage) -> None:
        try:
            frame = self._to_frame(msg, self._rgb_of_compressed)
        except Exception as e:  # noqa: BLE001 - UnsupportedImage, or OpenCV on a corrupt payload
            self._refuse("compressed image", msg.header, str(e))
            return
        self.runtime.submit(frame)

    def _on_prompts(self, msg: Prompts) -> None:
        """Hold the message's prompts and set the mode. The prompts are validated in automatic
        mode too: they are held, and used once ``automatic`` is switched off.

        The ``automatic`` parameter owns the mode: the message's ``automatic`` is set through
        ``set_parameters``, so the same validation (on-set) and application (post-set) run as
        for a parameter change from outside."""
        prompts = prompts_from_msgs(msg.prompts)
        try:
            self._validate_prompts(prompts)
        except ValueError as e:
            self._warn("prompts", f"Prompts message refused, keeping the previous prompts and mode: {e}")
            return
        automatic = bool(msg.automatic)
        self.runtime.set_prompts(prompts)
        self._warned_no_prompts = False
        if self._param("automatic") != automatic:
            result = self.set_parameters([Parameter("automatic", value=automatic)])[0]
            if not result.successful:
                self.get_logger().warning(f"could not set the automatic parameter to {automatic}: {result.reason}")
        what = "automatic mode (segment everything)" if automatic else f"{len(prompts)} prompt(s)"
        if automatic and prompts:
            what += f", {len(prompts)} prompt(s) held for when automatic is switched off"
        self.get_logger().info(f"holding {what} from now on")

    def _validate_prompts(self, prompts) -> None:
        validate_prompts(
            prompts,
            self._param("max_prompts"),
            self._param("max_points_per_prompt"),
            self._param("max_points"),
        )

    def _on_segment(self, request: SegmentImage.Request, response: SegmentImage.Response) -> SegmentImage.Response:
        with self._service_lock:
            waiting = self._service_calls
            admitted = waiting < self.max_service_calls
            if admitted:
                self._service_calls += 1
        if not admitted:
            response.success = False
            response.message = f"busy: {waiting} segment requests already waiting"
            return response
        try:
            return self._segment(request, response)
        finally:
            with self._service_lock:
                self._service_calls -= 1

    def _segment(self, request: SegmentImage.Request, response: SegmentImage.Response) -> SegmentImage.Response:
        frame = None
        if not request.use_latest_frame:
            try:
                frame = self._to_frame(request.image, self._rgb_of_image)
            except UnsupportedImage as e:
                response.success, response.message = False, f"image refused: {e}"
                return response
        prompts = prompts_from_msgs(request.prompts)
        if not request.automatic:
            if not prompts:
                response.success, response.message = False, "no prompts given and automatic is false"
                return response
            try:
                self._validate_prompts(prompts)
            except ValueError as e:
                response.success, response.message = False, f"prompts refused: {e}"
                return response
        future = self.runtime.request(frame, prompts, bool(request.automatic))
        timeout = float(self._param("service_timeout"))
        end = time.monotonic() + timeout
        try:
            while True:  # in short steps, so that a shutting-down node frees this thread at once
                try:
                    result = future.result(timeout=max(0.0, min(0.25, end - time.monotonic())))
                    break
                except concurrent.futures.TimeoutError:
                    if self._closing.is_set():
                        future.cancel()
                        response.success, response.message = False, "the node is shutting down"
                        return response
                    if time.monotonic() >= end:
                        raise
        except concurrent.futures.TimeoutError:
            future.cancel()
            response.success = False
            response.message = f"no result within service_timeout={timeout:g} s"
            return response
        except Exception as e:  # noqa: BLE001 - reported to the caller
            response.success, response.message = False, f"{type(e).__name__}: {e}"
            return response
        response.result = self._result_msg(result)[0]
        response.success = True
        response.message = f"{len(result.instances)} instance(s) in {result.timings.get('total', 0.0):.3f} s"
        return response

    # --------------------------------------------------------------------- outputs

    def _result_msg(self, result: FrameResult, t0: Optional[float] = None):
        """(SegmentationResult, postprocess seconds): its ``postprocess`` timing runs from ``t0``
        (default: now) to the end of the RLE encoding."""
        t0 = time.perf_counter() if t0 is None else t0
        timings = dict(result.timings)
        timings["postprocess"] = 0.0  # set below, once the RLE is done
        cfg = self.config
        degraded = result.stats is not None and result.stats.degraded
        msg = result_to_msg(
            result.meta,
            result.frame.size,
            result.instances,
            list(timings.items()),
            cfg.model,
            cfg.mode,
            cfg.partition.shape,
            cfg.random_weights,
            result.frames_dropped,
            status=SegmentationResult.STATUS_DEGRADED if degraded else SegmentationResult.STATUS_OK,
            reason=f"fallback {cfg.fallback}: " + "; ".join(result.stats.fallback) if degraded else "",
            tile_decisions=describe_decisions(getattr(result.stats, "privacy", None), self._server_names()),
        )
        post = time.perf_counter() - t0
        msg.timings[-1].seconds = post
        return msg, post

    def _on_result(self, result: FrameResult) -> None:
        """Worker thread: publish one frame's outputs (publishing is thread-safe)."""
        if not self.context.ok():
            return  # shutting down
        if not result.encoded and not self._warned_no_prompts:
            self._warned_no_prompts = True
            self.get_logger().warning(
                "no prompts held and automatic is false: publishing empty results. Publish "
                "ped_sam_msgs/Prompts on ~/prompts or set automatic:=true"
            )
        t0 = time.perf_counter()
        label = label_image([i.mask for i in result.instances], [i.id for i in result.instances], result.frame.size)
        msg, post = self._result_msg(result, t0)
        self.masks_pub.publish(msg)
        self.label_pub.publish(label_to_image(label, result.meta))
        if self.overlay_pub.get_subscription_count() > 0:
            self.overlay_pub.publish(rgb_to_image(self._overlay(result), result.meta))
        self.runtime.record_stage("postprocess", post)

    def _overlay(self, result: FrameResult):
        points = [pt for p in result.prompts for pt in p.points]
        boxes = [p.box for p in result.prompts if p.box is not None]
        caption = f"{len(result.instances)} object(s)"
        privacy = getattr(result.stats, "privacy", None)
        if privacy is not None:
            c = privacy.counts
            caption += (
                f" | {len(privacy.detections)} sensitive: {c['local']} local, {c['obfuscate']} obfuscated, "
                f"{c['drop']} dropped tile(s)"
            )
        if self.config.random_weights:
            caption = f"{RANDOM_BANNER} | " + caption
        out = overlay(
            result.frame.rgb,
            [i.mask for i in result.instances],
            alpha=float(self._param("overlay_alpha")),
            points=points,
            boxes=boxes,
            caption=caption,
        )
        if privacy is not None:  # the detections the policy acted on, in magenta
            draw_boxes(out, [d.box for d in privacy.detections], color=(255, 0, 255), thickness=2)
        return out

    def _server_names(self) -> List[str]:
        pipe = self.runtime.pipeline
        return list(pipe.transport.server_names) if pipe is not None else list(self.config.server_names)

    def _privacy_totals(self):
        """The privacy hook's cumulative counts (None when the policy is off)."""
        pipe = self.runtime.pipeline
        hook = getattr(getattr(pipe, "encoder", None), "frame_hook", None)
        return None if hook is None else dict(hook.totals, frames=hook.frames)

    def _on_error(self, report: ErrorReport) -> None:
        """Worker thread: a stream frame that failed is published on ~/masks with status FAILED,
        the reason and its input header (downstream nodes can tell it from a slow frame)."""
        if not self.context.ok():
            return
        who = f" (servers: {', '.join(report.servers)})" if report.servers else ""
        skipped = self._throttle("frame_failed")
        if skipped is not None:
            more = f" [{skipped} more since the last one]" if skipped else ""
            self.get_logger().error(f"frame failed{who}: {report.message}{more}")
        if not report.from_request and report.meta is not None:
            cfg = self.config
            self.masks_pub.publish(
                result_to_msg(
                    report.meta,
                    report.size,
                    [],
                    [],
                    cfg.model,
                    cfg.mode,
                    cfg.partition.shape,
                    cfg.random_weights,
                    self.runtime.stats.counts.frames_dropped,
                    status=SegmentationResult.STATUS_FAILED,
                    reason=report.message,
                )
            )
        now = time.monotonic()
        if now - self._last_diag_push >= 0.2:  # push diagnostics at once, but not in a flood
            self._on_diag_timer()

    def _on_requested_incompatible_qos(self, info) -> None:
        self.get_logger().error(
            f"incompatible QoS on a subscription: a publisher offers an incompatible "
            f"{qos_policy_name_from_kind(info.last_policy_kind)} policy ({info.total_count} so far); nothing is "
            f"received from it. For images, image_qos.reliability=best_effort matches every camera.",
            throttle_duration_sec=5.0,
        )

    def _on_offered_incompatible_qos(self, info) -> None:
        self.get_logger().error(
            f"incompatible QoS on an output: a subscriber requests an incompatible "
            f"{qos_policy_name_from_kind(info.last_policy_kind)} policy ({info.total_count} so far)",
            throttle_duration_sec=5.0,
        )

    # ----------------------------------------------------------------- diagnostics

    def diagnostic_statuses(self) -> List[DiagnosticStatus]:
        return diagnostic_statuses(
            self.get_fully_qualified_name(),
            self.runtime.snapshot(),
            self.config,
            self._refused_images,
            time.time(),
            privacy=self._privacy_totals(),
        )

    def _on_diag_timer(self) -> None:
        try:
            self.publish_diagnostics()
        except Exception as e:  # noqa: BLE001 - diagnostics must never take the node down
            self.get_logger().error(
                f"publishing diagnostics failed: {type(e).__name__}: {e}", throttle_duration_sec=10.0
            )

    def publish_diagnostics(self) -> None:
        with self._diag_lock:
            self._last_diag_push = time.monotonic()
            msg = DiagnosticArray(status=self.diagnostic_statuses())
            msg.header.stamp = self.get_clock().now().to_msg()
            self.diag_pub.publish(msg)

    @property
    def executor_threads(self) -> int:
        """Threads the node needs: one per service call that may wait, plus the other groups'."""
        return self.max_service_calls + OTHER_CALLBACK_THREADS

    def begin_shutdown(self) -> None:
        """Make waiting service calls return (so the executor's threads can be joined)."""
        self._closing.set()

    def shutdown(self) -> None:
        self.begin_shutdown()
        self.runtime.stop()


def make_executor(node: EdgeNode) -> MultiThreadedExecutor:
    """The executor the node needs (see the module docstring: service calls never starve the rest)."""
    return MultiThreadedExecutor(num_threads=node.executor_threads, context=node.context)


class RosLogHandler(logging.Handler):
    """Python ``logging`` records (core, runtime, ZeroMQ client) into the node's ROS logger.

    It also owns the level names: the node's ``--log-level`` (and the launch files'
    ``log_level``) accept :attr:`LEVELS`, the ROS severities, with ``warning`` as an alias.
    """

    #: level name -> (rclpy severity, Python logging level)
    LEVELS = {
        "debug": (rclpy.logging.LoggingSeverity.DEBUG, logging.DEBUG),
        "info": (rclpy.logging.LoggingSeverity.INFO, logging.INFO),
        "warn": (rclpy.logging.LoggingSeverity.WARN, logging.WARNING),
        "warning": (rclpy.logging.LoggingSeverity.WARN, logging.WARNING),
        "error": (rclpy.logging.LoggingSeverity.ERROR, logging.ERROR),
        "fatal": (rclpy.logging.LoggingSeverity.FATAL, logging.CRITICAL),
    }
    #: the Python loggers whose level follows the node's (third-party libraries keep INFO)
    OWN_LOGGERS = ("ped_sam_ros", "remote_node")

    def __init__(self, logger):
        super().__init__()
        self.ros_logger = logger

    @classmethod
    def python_level(cls, severity) -> int:
        """The Python ``logging`` level that lets through what a ROS severity lets through."""
        sev = int(severity)
        for ros_sev, py_level in cls.LEVELS.values():
            if int(ros_sev) >= sev:
                return py_level
        return logging.CRITICAL

    @classmethod
    def apply_level(cls, py_level: int) -> None:
        """Our packages' Python loggers at ``py_level``; the root (other libraries) at INFO or above."""
        for name in cls.OWN_LOGGERS:
            logging.getLogger(name).setLevel(py_level)
        logging.getLogger().setLevel(max(py_level, logging.INFO))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f"[{record.name}] {self.format(record)}"
            if record.levelno >= logging.CRITICAL:
                self.ros_logger.fatal(text)
            elif record.levelno >= logging.ERROR:
                self.ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(text)
            else:
                self.ros_logger.debug(text)
        except Exception:  # noqa: BLE001 - logging must never raise
            pass


def main(args: Optional[List[str]] = None) -> int:
    """Run the edge node until SIGINT/SIGTERM (``args``: the command line, default ``sys.argv``).

    ``--log-level LEVEL`` (before ``--ros-args``; see :attr:`RosLogHandler.LEVELS`) sets this
    node's logger and the pipeline's Python loggers only: rcl and rmw keep theirs (a global
    ``--ros-args --log-level debug`` turns them all on). Without it, the Python loggers follow
    the node logger's effective level, so ``--ros-args --log-level edge_node:=debug`` works too.
    A ``--params-file`` that does not exist stops the node with the file's name (rcl ignores it).

    Shutdown: the worker gets what is left of a 1 s budget to finish its frame; then the node
    is destroyed and rclpy shut down. Started as a program (``args`` is None: the console script,
    ``python -m``), the process then ends with ``os._exit``: the interpreter's own teardown (a
    garbage collection over every torch/numpy object) took 4-6 s on a loaded 2-core machine, past
    launch's 5 s SIGINT timeout, and a worker still inside a torch call made it abort
    ("terminate called without an active exception"). Logs are flushed first; nothing else of
    ours needs the interpreter's teardown (sockets, DDS entities and the pipeline are closed).
    """
    import argparse
    import os
    import signal

    from rclpy.utilities import remove_ros_args

    argv = list(args if args is not None else sys.argv)
    params_files, in_ros_args = [], False
    for i, a in enumerate(argv):
        if a == "--ros-args":
            in_ros_args = True
        elif a == "--":
            in_ros_args = False
        elif in_ros_args and a == "--params-file" and i + 1 < len(argv):
            params_files.append(argv[i + 1])
    missing = [p for p in params_files if not os.path.isfile(p)]
    if missing:
        print(f"edge_node: params file {missing[0]!r} does not exist or is not a file", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(prog="edge_node", description="PED-SAM edge node (ROS arguments after --ros-args)")
    ap.add_argument(
        "--log-level",
        type=str.lower,
        choices=list(RosLogHandler.LEVELS),
        help="this node's log level, also for its Python logging (rcl/rmw unchanged)",
    )
    try:
        own, _unknown = ap.parse_known_args(remove_ros_args(argv)[1:])
        rclpy.init(args=argv)
    except Exception as e:  # noqa: BLE001 - e.g. a malformed --ros-args rule
        print(f"edge_node: cannot parse the ROS arguments: {e}", file=sys.stderr)
        return 2
    boot_logger = rclpy.logging.get_logger(NODE_NAME)
    if own.log_level:
        boot_logger.set_level(RosLogHandler.LEVELS[own.log_level][0])
    handler = RosLogHandler(boot_logger)
    logging.getLogger().addHandler(handler)
    RosLogHandler.apply_level(RosLogHandler.python_level(boot_logger.get_effective_level()))
    node = None
    code = 0
    stop_by = None
    try:
        try:
            node = EdgeNode()
            log = node.get_logger()
            if own.log_level:
                log.set_level(RosLogHandler.LEVELS[own.log_level][0])
            handler.ros_logger = log
            RosLogHandler.apply_level(RosLogHandler.python_level(log.get_effective_level()))
        except Exception as e:  # configuration, checkpoint, keys: one clear line and a non-zero exit
            from ped_sam_ros.core.geometry import PartitionError
            from ped_sam_ros.core.model import CheckpointError

            expected = (ConfigError, CheckpointError, PartitionError, FileNotFoundError, ValueError)
            boot_logger.fatal(f"cannot start: {type(e).__name__}: {e}")
            if not isinstance(e, expected):
                raise
            code = 2
        if node is not None:
            executor = make_executor(node)
            executor.add_node(node)
            try:
                executor.spin()
            except (KeyboardInterrupt, ExternalShutdownException):
                pass
            finally:
                stop_by = time.monotonic() + 1.0
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # launch and the terminal both send one
                # rclpy's signal handler already shut the context down: ROS loggers would fail
                # to publish to /rosout from here on, so Python records go to stderr directly.
                logging.getLogger().removeHandler(handler)
                fallback = logging.StreamHandler(sys.stderr)
                fallback.setFormatter(
                    logging.Formatter(f"[%(levelname)s] [{node.get_logger().name}]: [%(name)s] %(message)s")
                )
                logging.getLogger().addHandler(fallback)
                node.begin_shutdown()
                executor.shutdown(timeout_sec=0.25, wait_for_threads=False)
    finally:
        if node is not None:
            node.runtime.stop(timeout_s=max(0.05, (stop_by or time.monotonic()) - time.monotonic()))
            if node.runtime.state in ("stopped", "failed", "crashed"):
                node.shutdown()
            else:
                logging.getLogger("ped_sam_ros.ros.edge_node").warning(
                    "exiting while the worker is still computing a frame"
                )
            node.destroy_node()
        rclpy.try_shutdown()
    if args is None:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
