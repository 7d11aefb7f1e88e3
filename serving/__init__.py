"""Serving: ONNX Runtime numerics (plain functions, no torch) and the BentoML service declaration."""
