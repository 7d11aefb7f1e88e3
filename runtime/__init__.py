"""The exported-model runtime: what loads ``exported_models/`` and runs it, on numpy and ONNX Runtime only.

    manifest    manifests, sha256 checks, the model folder layout
    providers   ONNX Runtime sessions on CUDA or CPU, with bounded threads
    classifier  ClassifierRuntime: text -> topic probabilities, tokenised as in training
    generator   GeneratorRuntime: prompt -> characters, with resumable state (GenState)

Both sides import it: the evaluation, prediction and generation commands in ``training`` score the artifact
with the code that serves it, and ``serving`` wraps it in HTTP. It imports neither of them, nor torch nor
bentoml (tests/test_architecture.py). Importing the package does no work.
"""
