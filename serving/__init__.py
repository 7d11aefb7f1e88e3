"""Serving: ONNX Runtime numerics (plain functions, no torch) and the BentoML service declaration."""

__version__ = "0.1.0"  # the project's version (pyproject.toml); shown in the API docs
