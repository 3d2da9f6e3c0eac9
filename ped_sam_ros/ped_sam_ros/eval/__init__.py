"""Evaluation of PED-SAM against cloud and edge-only SAM: orchestration, report, plots.

Run it with ``ped-sam-eval`` (``ped_sam_ros.tools.evaluate``).
"""
