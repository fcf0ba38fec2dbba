"""Serving commands: ``optimodel serve``, ``stage-repository``, ``tritonserver`` and ``demo``, and
the load generator; the Triton machinery they use is ``optimodel.triton`` (see docs/serving.md)."""
