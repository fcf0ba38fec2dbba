"""Triton Inference Server: everything the project knows about it, in one place.

- ``layout``: the names of a model repository and of a build output (directories, files,
  platforms);
- ``config``: ``config.pbtxt`` -- the ``ModelConfig`` the builder writes, parsing and rendering;
- ``repository``: writing a build's repositories (``repository/``, ``repository-python/``), with
  the Python-backend model (``python_model.py.tmpl``);
- ``overrides``: ``spec.serving`` applied to a built config (dynamic batching, instances);
- ``stage``: ``stage-repository``, the Triton pod's init container: fetch, apply, put in place;
- ``metrics``: Triton's metric names, the autoscalers' PromQL, reading the metrics port;
- ``local``: a real local ``tritonserver`` from the ``nvidia-pytriton`` wheel.

The operator image imports ``layout``, ``metrics``, ``config``, ``overrides`` and ``stage``:
nothing here imports the builder, torch, ONNX or ONNX Runtime (``tests/unit/test_layers.py``).
See docs/serving.md.
"""
