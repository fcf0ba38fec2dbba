"""The optimodel Kubernetes operator (importable as ``optimodel.operator``).

Layers, top to bottom (a module may import only from layers below it):

- ``handlers``  registers kopf handlers; every handler calls ``reconcile.reconcile``.
- ``reconcile`` the numbered steps from spec to status; decides, never builds manifests.
- ``manifests`` pure functions: typed spec + settings -> manifest dicts (tested by equality).
- ``kube``      the only module that talks to the Kubernetes API server.
- ``settings``  typed operator settings read from the environment.
"""
