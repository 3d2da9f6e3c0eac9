"""Benchmarks that print measured figures and ratios (not timed tests).

``encoder`` (the ``ped-sam-bench`` command): stage times, attention, memory, precision
fidelity; the other modules measure the wire codecs, the link and the edge detectors.
"""
