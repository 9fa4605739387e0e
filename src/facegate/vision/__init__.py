"""Vision: image in, faces out: decoding and limits, detection, locating the face and its points,
alignment, quality signals, embedding models and model import. Knows nothing of storage or HTTP."""
