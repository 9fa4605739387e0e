"""Head pose (yaw, pitch, roll) from a face's alignment points.

Method: the detector's points are fitted, by least squares, with the same points of a rigid 3D mean
face seen by a scaled-orthographic ("weak-perspective") camera: ``p = s * R[:2] @ X + t``. The fit
starts from the best affine camera (a 2x3 least-squares solve against the model's fixed pseudo-inverse),
takes its nearest scaled rotation (polar decomposition), then refines rotation and scale by Gauss-Newton
(2-4 steps). Weak perspective needs no camera intrinsics, which the server does not know (a client's
face crop, a resized photo); the error it adds is small beside the points' own: noise-free points seen
by a pinhole camera (f = 1000 px) from 60 cm are read to within 4 deg (|yaw| <= 60, |pitch| and |roll|
<= 20; mean 2.8 in yaw), from 1 m to within 2.5. A pinhole camera with the image's side as focal length
(SQPnP, then refined) did worse on the validation photos, which are crops of larger photos: yaw error
7.5 against 6.4. Pure Python on a handful of floats
(NumPy's per-call overhead would be most of the cost): 30-50 us a face on one core (``bench/headpose.py``).

The 3D points are from MediaPipe's canonical face model (``mediapipe/modules/face_geometry/data/
canonical_face_model.obj``, Apache-2.0; units about a centimetre), in its frame: x toward the subject's
left (the image's right on a frontal face), y up, z out of the face toward the camera:

- eye centres: the mean of the 16 eyelid-contour vertices of each eye (right eye 33, 7, 163, 144, 145, 153,
  154, 155, 133, 173, 157, 158, 159, 160, 161, 246; the left eye is its mirror image);
- nose tip: vertex 4, the model's most anterior point (pronasale);
- mouth corners: vertices 61 and 291;
- mouth centre (BlazeFace's fourth point): the midpoint of the inner-lip vertices 13 and 14.

Points in: YuNet's five (right eye, left eye, nose tip, right mouth corner, left mouth corner, the subject's
right first, i.e. image-left first) or BlazeFace's four alignment points (eyes, nose tip, mouth centre), in
image pixels (x right, y down). Fewer points (the two eyes a client sent): no estimate.

Convention (AFLW2000-3D's, the set it was validated on): degrees; the head's rotation is
``Rx(-pitch) @ Ry(-yaw) @ Rz(-roll)`` in the model frame above, i.e.

- yaw > 0: the face turned toward the IMAGE's left (the subject's own right; the nose points left in the picture);
- pitch > 0: chin up;
- roll > 0: the head rotated clockwise as seen in the image (the image-right eye lower).

Measured (``bench/headpose.py``, 228 AFLW2000-3D photos in ``../shared/faces/pose``, through the
server's own path, ``Pipeline.locate``, which reads pose from BlazeFace's four points where the face has
them): yaw mean absolute error 4.3 deg over the 160 photos with |yaw| <= 60 (the old nose-offset
formula: 15.7), the sign right for 100 % of the 188 photos with |yaw| >= 15; pitch 6.6 and roll 4.1
deg over the same 160. On YuNet's five points of the same faces: yaw 6.4, pitch 10.8, roll 8.6 (they
place pitch poorly and follow an in-plane turn of the head by only about half). Beyond |yaw| 60 the
estimate falls short (12-13 deg at 60..90): read a large value as "turned far", not as an angle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import mul

import numpy as np

_EYE = (3.16008494, 2.64311812, 3.6260735)  # |x|, y, z of an eye centre
_NOSE = (0.0, -0.46317, 7.58658)
_MOUTH = (2.456206, -4.342621, 4.283884)  # |x|, y, z of a mouth corner
_MOUTH_CENTRE = (0.0, (-3.994436 - 4.5424) / 2, (5.219482 + 5.404754) / 2)

#: Model points in the order of the detectors' points (5: YuNet; 4: BlazeFace's alignment points).
MODEL_POINTS: dict[int, tuple[tuple[float, float, float], ...]] = {
    5: ((-_EYE[0], _EYE[1], _EYE[2]), _EYE, _NOSE, (-_MOUTH[0], _MOUTH[1], _MOUTH[2]), _MOUTH),
    4: ((-_EYE[0], _EYE[1], _EYE[2]), _EYE, _NOSE, _MOUTH_CENTRE),
}

#: Gauss-Newton: at most this many steps, stopping after a rotation step under _GN_TOL radians (it converges
#: linearly, each step 3-20x shorter than the last: the angles are then within ~0.05 degrees of the optimum;
#: 2-4 steps on real faces).
_GN_STEPS = 8
_GN_TOL = 1.5e-3


@dataclass(frozen=True)
class HeadPose:
    """Head rotation in degrees, in AFLW2000-3D's convention (module docstring): yaw > 0 the face turned
    toward the image's left, pitch > 0 chin up, roll > 0 clockwise in the image."""

    yaw: float
    pitch: float
    roll: float


def _prepare(model: tuple[tuple[float, float, float], ...]) -> tuple[tuple[tuple[float, ...], ...], ...]:
    """All the fit needs of a model, fixed per model: the columns (x, y, z) of its centred points Xc, the
    columns of their pseudo-inverse ``Xc (Xc^T Xc)^-1`` and the upper triangle of their scatter ``Xc^T Xc``."""
    xc = np.asarray(model, dtype=np.float64)
    xc = xc - xc.mean(axis=0)
    scatter = xc.T @ xc
    pinv = xc @ np.linalg.inv(scatter)
    cols = tuple(tuple(c) for c in xc.T.tolist())
    pcols = tuple(tuple(c) for c in pinv.T.tolist())
    upper = tuple(scatter[i, j] for i in range(3) for j in range(i, 3))
    return cols, pcols, upper


_MODELS = {n: _prepare(m) for n, m in MODEL_POINTS.items()}


def _rotate(w0: float, w1: float, w2: float, r: list[list[float]]) -> list[list[float]]:
    """``exp([w]x) @ r`` (Rodrigues' formula) for a rotation vector ``w``."""
    th = math.sqrt(w0 * w0 + w1 * w1 + w2 * w2)
    if th < 1e-15:
        return r
    k0, k1, k2 = w0 / th, w1 / th, w2 / th
    s, c = math.sin(th), 1.0 - math.cos(th)
    e00, e01, e02 = 1 - c * (k1 * k1 + k2 * k2), -s * k2 + c * k0 * k1, s * k1 + c * k0 * k2
    e10, e11, e12 = s * k2 + c * k0 * k1, 1 - c * (k0 * k0 + k2 * k2), -s * k0 + c * k1 * k2
    e20, e21, e22 = -s * k1 + c * k0 * k2, s * k0 + c * k1 * k2, 1 - c * (k0 * k0 + k1 * k1)
    (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = r
    return [
        [e00 * a0 + e01 * b0 + e02 * c0, e00 * a1 + e01 * b1 + e02 * c1, e00 * a2 + e01 * b2 + e02 * c2],
        [e10 * a0 + e11 * b0 + e12 * c0, e10 * a1 + e11 * b1 + e12 * c1, e10 * a2 + e11 * b2 + e12 * c2],
        [e20 * a0 + e21 * b0 + e22 * c0, e20 * a1 + e21 * b1 + e22 * c1, e20 * a2 + e21 * b2 + e22 * c2],
    ]


def _dot(a: list[float], b: list[float]) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def fit_rotation(points: np.ndarray) -> tuple[list[list[float]], float] | None:
    """The rotation (3x3, model frame, rows) and scale (pixels per model unit) of the weak-perspective fit
    of 4 or 5 image points (x right, y down) to ``MODEL_POINTS``; None for other counts or degenerate points."""
    p = np.asarray(points, dtype=np.float64).tolist()
    n = len(p)
    if n not in _MODELS or any(len(q) != 2 for q in p):
        return None
    xcols, pcols, (c00, c01, c02, c11, c12, c22) = _MODELS[n]
    mx, my = sum(q[0] for q in p) / n, sum(q[1] for q in p) / n
    u = [q[0] - mx for q in p]
    v = [my - q[1] for q in p]  # y up, as in the model frame
    if not all(map(math.isfinite, u + v)):
        return None
    # Affine camera A (2x3) by least squares, then its nearest scaled rotation: R2 = (A A^T)^(-1/2) A.
    a0 = [sum(map(mul, u, c)) for c in pcols]
    a1 = [sum(map(mul, v, c)) for c in pcols]
    m00, m01, m11 = _dot(a0, a0), _dot(a0, a1), _dot(a1, a1)
    det = m00 * m11 - m01 * m01
    if not det > 1e-12 * (m00 + m11) ** 2:  # collinear or coincident points (also NaN)
        return None
    sd = math.sqrt(det)
    tr = math.sqrt(m00 + m11 + 2 * sd)  # the sum of A's two singular values
    k = 1.0 / (tr * sd)
    i00, i01, i11 = (m11 + sd) * k, -m01 * k, (m00 + sd) * k
    r0 = [i00 * x + i01 * y for x, y in zip(a0, a1)]
    r1 = [i01 * x + i11 * y for x, y in zip(a0, a1)]
    r = [r0, r1, [r0[1] * r1[2] - r0[2] * r1[1], r0[2] * r1[0] - r0[0] * r1[2], r0[0] * r1[1] - r0[1] * r1[0]]]
    s = tr / 2
    # Gauss-Newton on (a small rotation w applied on the left, the scale s); residuals s * (R X_i)[:2] - (u_i, v_i).
    # With Y_i = R X_i, its sums need only the model's scatter C (S = R C R^T) and Gu = sum X_i u_i, Gv = sum X_i v_i.
    gu0, gu1, gu2 = (sum(map(mul, u, c)) for c in xcols)  # sum_i X_i u_i
    gv0, gv1, gv2 = (sum(map(mul, v, c)) for c in xcols)  # sum_i X_i v_i
    for _ in range(_GN_STEPS):
        (p0, p1, p2), (q0, q1, q2), (w0, w1, w2) = r
        tp = (c00 * p0 + c01 * p1 + c02 * p2, c01 * p0 + c11 * p1 + c12 * p2, c02 * p0 + c12 * p1 + c22 * p2)  # C r0
        tq = (c00 * q0 + c01 * q1 + c02 * q2, c01 * q0 + c11 * q1 + c12 * q2, c02 * q0 + c12 * q1 + c22 * q2)  # C r1
        s00 = p0 * tp[0] + p1 * tp[1] + p2 * tp[2]
        s11 = q0 * tq[0] + q1 * tq[1] + q2 * tq[2]
        s02 = w0 * tp[0] + w1 * tp[1] + w2 * tp[2]
        s12 = w0 * tq[0] + w1 * tq[1] + w2 * tq[2]
        s22 = c00 * w0 * w0 + c11 * w1 * w1 + c22 * w2 * w2 + 2 * (c01 * w0 * w1 + c02 * w0 * w2 + c12 * w1 * w2)
        yu0, yu1, yu2 = p0 * gu0 + p1 * gu1 + p2 * gu2, q0 * gu0 + q1 * gu1 + q2 * gu2, w0 * gu0 + w1 * gu1 + w2 * gu2
        yv0, yv1, yv2 = p0 * gv0 + p1 * gv1 + p2 * gv2, q0 * gv0 + q1 * gv1 + q2 * gv2, w0 * gv0 + w1 * gv1 + w2 * gv2
        # Normal equations J^T J d = -J^T e; J^T J = [[a, 0, b, c], [0, a, f, g], [b, f, h, 0], [c, g, 0, k]]:
        # eliminate d0, d1 (rows 0, 1), solve the 2x2 left for d2, d3.
        ss, sk = s * s, s00 + s11
        ja, jb, jc, jf, jg, jh = ss * s22, -ss * s02, -s * s12, -ss * s12, s * s02, ss * sk
        e0, e1, e2, e3 = s * (s * s12 - yv2), -s * (s * s02 - yu2), s * (yv0 - yu1), yu0 + yv1 - s * sk
        if not ja > 0.0:
            break
        m22, m23, m33 = jh - (jb * jb + jf * jf) / ja, -(jb * jc + jf * jg) / ja, sk - (jc * jc + jg * jg) / ja
        t2, t3 = e2 - (jb * e0 + jf * e1) / ja, e3 - (jc * e0 + jg * e1) / ja
        det = m22 * m33 - m23 * m23
        if not det > 0.0:
            break
        d2, d3 = (t2 * m33 - t3 * m23) / det, (t3 * m22 - t2 * m23) / det
        d0, d1 = (e0 - jb * d2 - jc * d3) / ja, (e1 - jf * d2 - jg * d3) / ja
        r = _rotate(d0, d1, d2, r)
        s += d3
        if d0 * d0 + d1 * d1 + d2 * d2 < _GN_TOL * _GN_TOL:
            break
    return r, s


def head_pose(points: np.ndarray) -> HeadPose | None:
    """Yaw, pitch and roll (degrees, module docstring's convention) from 5 YuNet or 4 BlazeFace alignment
    points in image pixels; None for fewer points (eyes only) or degenerate ones."""
    fit = fit_rotation(points)
    if fit is None:
        return None
    r = fit[0]
    # R = Rx(a) Ry(b) Rz(c): R[0][2] = sin b, R[1][2] = -sin a cos b, R[2][2] = cos a cos b, R[0][1] = -cos b sin c.
    b = math.asin(max(-1.0, min(1.0, r[0][2])))
    a = math.atan2(-r[1][2], r[2][2])
    c = math.atan2(-r[0][1], r[0][0])
    return HeadPose(yaw=-math.degrees(b), pitch=-math.degrees(a), roll=-math.degrees(c))
