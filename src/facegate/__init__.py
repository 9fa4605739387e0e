"""FaceGate: a self-hosted FaceID server (detect, align, embed, search, rank)."""

__version__ = "0.1.0"
