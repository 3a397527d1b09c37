"""tal_keras: S-2D-TAN temporal action localization in Keras 3.

The numpy-only modules (lattice, clips, targets, data, detections, metrics)
import no TensorFlow, so serving needs only numpy and onnxruntime.
"""

__version__ = "0.1.0"


def configure_logging(level="INFO"):
    """Plain one-line messages from the "tal_keras" logger on stderr (entry points)."""
    import logging

    logger = logging.getLogger("tal_keras")
    if not any(getattr(handler, "_tal_keras", False) for handler in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname).1s %(message)s"))
        handler._tal_keras = True
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
