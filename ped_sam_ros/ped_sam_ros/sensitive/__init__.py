"""Sensitive content at the edge: detectors, the per-tile policy and the obfuscations.

``types`` (Detection, the Detector protocol), ``detectors`` (Haar, HOG, MTCNN,
BlazeFace, PP-OCR text; :func:`~.detectors.make_detector`), ``policy`` (PolicyConfig,
:func:`~.policy.plan_frame` -> FramePlan), ``obfuscate`` (:func:`~.obfuscate.tile_crops`)
and ``encode`` (PolicyEncoder, the prototype of the policy inside the distributed
encoder).  ROS-free; cv2 and the optional detector packages are imported where used.
"""
