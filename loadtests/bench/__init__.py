"""Benchmarks: speed against a ceiling measured in the same run (``python -m loadtests.bench``, see run.py).

run         the command: sections, printing, bench.json, plots
models      in-process ceilings: ONNX Runtime vs TorchScript vs eager PyTorch, int8 quantization
http_load   asyncio + aiohttp clients against a running server
report      bench.json -> the markdown tables of docs/benchmarks.md
"""
