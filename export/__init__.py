"""ONNX export of a trained run and TensorFlow-free serving.

    python -m export.onnx_export --workdir RUN        # RUN/s2dtan.onnx (needs TF)
    python -m export.serve --model RUN/s2dtan.onnx ... # numpy + onnxruntime only

`export.detector.Detector` is the serving runtime; `export.metadata` reads and
writes what the ONNX file carries besides the graph. Nothing imported here
pulls in TensorFlow; only `export.onnx_export` does.
"""


def __getattr__(name):
    # Lazy: `import export` (and so `python -m export.onnx_export`) loads nothing.
    if name == "Detector":
        from export.detector import Detector

        return Detector
    raise AttributeError(f"module 'export' has no attribute {name!r}")
