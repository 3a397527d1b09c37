"""tal_keras: S-2D-TAN temporal action localization in Keras 3.

The numpy-only modules (lattice, clips, targets, data, detections, metrics)
import no TensorFlow, so serving needs only numpy and onnxruntime.
"""

__version__ = "0.1.0"
