"""Serving: the local Triton Inference Server, repository staging for Triton pods, and the
queue-depth metric and queries the autoscalers use (see docs/serving.md)."""
