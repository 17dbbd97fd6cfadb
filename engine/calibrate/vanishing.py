"""Calibration from Manhattan vanishing points: focal length, principal point and rotation from one photo.

Pipeline (on a downscaled working copy; results are reported in original pixels):
  1. LSD line segments (`lines.detect_segments`).
  2. Hypotheses from 4 segments: v1 = l_a x l_b, v2 = l_c x l_d. With the principal point c known (the centre),
     two orthogonal vanishing directions give f^2 = -(v1 - c).(v2 - c) (Caprile & Torre 1990), in homogeneous
     form f^2 = -(x1 x2 + y1 y2) / (w1 w2) with (x, y, w) relative to c, which is undefined when a vanishing
     point is at infinity (w = 0): such pairs cannot fix f. The third direction is d3 = d1 x d2. Hypotheses are
     scored by the length-weighted, truncated count of segments pointing at one of their three vanishing points
     (Tardif 2009 residual, `lines.residuals`), times a zenith prior and a weak prior on f (`_prior_weight`).
  3. The best few mutually different hypotheses are refined (Levenberg-Marquardt with Cauchy weights, graduated
     from a wide to a tight scale, relabelling between rounds) in rotation and log f over all segments, and the
     best refined one (same score) wins. A weak prior on f keeps an unobservable focal (two vanishing points
     near infinity) finite; it then shows up as a large posterior variance. The principal point is freed,
     starting from the orthocentre of the vanishing-point triangle (Caprile & Torre), only when all three
     vanishing points are finite and well conditioned, and kept only when its posterior standard deviation is
     small; otherwise it is the image centre.
  4. Checks: vanishing points fitted per cluster without the orthogonality constraint give a focal length for
     each well-conditioned pair; their agreement, the posterior variance of the field of view, the support of
     the directions and the share of line length explained make the confidence (`_confidence`).
The rotation is cam_from_world of a Manhattan frame with +Z up: Z is the direction nearest the image's up axis
(so the camera's pitch must stay within about +-45 degrees), X the other direction nearest the image's right,
Y = Z x X (so Y points roughly where the camera looks).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .image_io import LoadedImage, load_image
from .lines import Segments, detect_segments, residuals
from .result import CalibrationError, CalibrationResult

WORK_SIDE = 1024  # long side of the working copy, pixels
MIN_SIDE = 32  # smaller images have too few pixels for line segments
MIN_SEGMENTS = 12
MIN_LENGTH = (8.0, 0.015)  # segments shorter than max(px, fraction of the diagonal) are dropped
HFOV_RANGE_DEG = (8.0, 150.0)  # focal lengths outside this range are not hypothesised
PRIOR_HFOV_DEG = 55.0  # weak prior on f in the refinement ...
PRIOR_LOG_SIGMA = 1.0  # ... with this standard deviation in log f
PP_PRIOR_SIGMA = 0.1  # weak prior keeping a free principal point near the centre (fraction of the long side)
SELECT_LOG_SIGMA = 3.0  # prior on log f when choosing among hypotheses (see _prior_weight) ...
UP_SIGMA_DEG = 45.0  # ... and on the angle between the image's up axis and the nearest Manhattan direction
N_HYPOTHESES = 2000  # random 4-segment samples ...
SCORED_SEGMENTS = 300  # ... drawn from and scored on this many longest segments ...
BATCH = 250  # ... (scored this many at a time) ...
N_REFINED = 6  # ... and this many of the best, mutually different, refined: the best refined one wins
LM_ITERATIONS = 30
# Refinement rounds: (labelling distance, Cauchy scale), both times the inlier threshold
ROBUST_SCHEDULE = ((4.0, 2.0), (2.0, 1.0), (1.0, 0.5), (1.0, 0.25))
NOISE_PX = 0.5  # standard deviation of segment end points assumed by the priors and the covariance floor
PP_MIN_ANGLE_DEG = 12.0  # every Manhattan axis this far out of the image plane before the pp is estimated
PP_MAX_SIGMA = 0.01  # keep an estimated pp only if its std is under this fraction of the long side
WELL_CONDITIONED = 4.0  # a vanishing point within this many focal lengths of the pp checks the focal length
AT_INFINITY = 100.0  # ... and one farther than this many is reported as at infinity
# Confidence scales (see _confidence), set on generated rooms (bench/bench_calibrate.py)
CONF_SIGMA_DEG = 1.5
CONF_SUPPORT = 15
CONF_PAIRS = 0.2
CONF_EXPLAINED = (0.2, 0.5)
AXES = "XYZ"


def inlier_threshold(width: int, height: int) -> float:
    """Segment-to-vanishing-point distance (pixels) under which a segment supports it."""
    return max(1.0, 1.5e-3 * math.hypot(width, height))


@dataclass
class ManhattanFit:
    """A Manhattan frame in the working image; pixel coordinates relative to the image centre."""
    f: float
    pp: np.ndarray  # (2,) principal point relative to the centre
    directions: np.ndarray  # (3, 3): column k is Manhattan direction k in camera axes (OpenCV)
    labels: np.ndarray  # (N,) direction of each segment, -1 for outliers
    sigma_log_f: float  # posterior standard deviation of log f (0 when the focal was given)
    sigma_pp: float  # posterior standard deviation of the pp, pixels (0 when not estimated)
    pp_source: str  # 'centre', 'given' or 'orthocentre'
    rms_px: float  # RMS residual of the inliers

    def vanishing_points(self) -> np.ndarray:
        """(3, 3) homogeneous vanishing points K d_k as rows, in coordinates centred on the image centre."""
        return _vps(self.directions.T, self.f, self.pp)


# ---------------------------------------------------------------------------------------------------------------
# Hypotheses


def _rodrigues(w: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(w))
    if theta < 1e-15:
        return np.eye(3)
    k = w / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * kx @ kx


def _focal_range(width: int) -> tuple[float, float]:
    wide, narrow = (math.radians(a) / 2 for a in HFOV_RANGE_DEG[::-1])
    return (width / 2) / math.tan(wide), (width / 2) / math.tan(narrow)


def _vps(directions: np.ndarray, f: np.ndarray | float, pp: np.ndarray) -> np.ndarray:
    """Vanishing points K d (..., 3) of directions (..., 3), f broadcastable against directions[..., 0]."""
    out = directions * 1.0
    out[..., 0] = f * directions[..., 0] + pp[0] * directions[..., 2]
    out[..., 1] = f * directions[..., 1] + pp[1] * directions[..., 2]
    return out


def _prior_weight(directions: np.ndarray, f: np.ndarray | float, f_prior: float, focal_given: bool
                  ) -> np.ndarray | float:
    """Prior multiplying hypothesis scores (directions (..., 3, 3) as rows):
      * zenith: the direction nearest the image's up axis (-y) within UP_SIGMA_DEG of it, as in photos taken
        roughly level (the usual zenith prior of single-view Manhattan methods); a family of parallel texture
        stripes otherwise outscores the few vertical edges of a room;
      * focal: log-normal around PRIOR_HFOV_DEG (SELECT_LOG_SIGMA), since near-parallel line families fit an
        orthogonal triplet for any large enough f."""
    up = np.abs(directions[..., 1]).max(axis=-1)
    angle = np.degrees(np.arccos(np.clip(up, 0.0, 1.0)))
    weight = np.exp(-0.5 * (angle / UP_SIGMA_DEG) ** 2)
    if not focal_given:
        weight = weight * np.exp(-0.5 * (np.log(f / f_prior) / SELECT_LOG_SIGMA) ** 2)
    return weight


def _score(directions: np.ndarray, f: np.ndarray | float, pp: np.ndarray, seg: Segments, thresh: float
           ) -> np.ndarray:
    """Length-weighted truncated-quadratic inlier count of direction triplets (..., 3 directions, 3)."""
    r = residuals(_vps(directions, np.asarray(f)[..., None], pp), seg).min(axis=-2)  # (..., N)
    return (seg.length * np.clip(1 - (r / thresh) ** 2, 0, None)).sum(axis=-1)


def _hypotheses(seg: Segments, width: int, thresh: float, rng: np.random.Generator, focal: float | None,
                pp: np.ndarray, f_prior: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores (H,), direction triplets (H, 3 directions, 3) and focals (H,) of random 4-segment samples."""
    lines = seg.line.copy()
    lines[:, 2] += lines[:, :2] @ pp  # the same lines in coordinates centred on the principal point
    length = seg.length
    idx = rng.choice(len(seg), size=(N_HYPOTHESES, 4), p=length / length.sum())
    v1 = np.cross(lines[idx[:, 0]], lines[idx[:, 1]])
    v2 = np.cross(lines[idx[:, 2]], lines[idx[:, 3]])
    ok = (np.linalg.norm(v1, axis=1) > 1e-9) & (np.linalg.norm(v2, axis=1) > 1e-9)
    if focal is None:
        f_lo, f_hi = _focal_range(width)
        with np.errstate(divide="ignore", invalid="ignore"):
            f2 = -(v1[:, 0] * v2[:, 0] + v1[:, 1] * v2[:, 1]) / (v1[:, 2] * v2[:, 2])
        ok &= np.isfinite(f2) & (f2 > f_lo ** 2) & (f2 < f_hi ** 2)
        f = np.sqrt(np.where(ok, f2, 1.0))[ok]
    else:
        f = np.full(int(ok.sum()), focal)
    d1 = np.stack([v1[ok, 0] / f, v1[ok, 1] / f, v1[ok, 2]], 1)
    d2 = np.stack([v2[ok, 0] / f, v2[ok, 1] / f, v2[ok, 2]], 1)
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    d2 -= np.sum(d2 * d1, 1, keepdims=True) * d1  # exact when f came from this pair, else projected
    n2 = np.linalg.norm(d2, axis=1)
    keep = n2 > 1e-3  # the two vanishing points coincide: no second direction
    d1, d2, f = d1[keep], d2[keep] / n2[keep, None], f[keep]
    dirs = np.stack([d1, d2, np.cross(d1, d2)], 1)
    scores = np.concatenate([_score(dirs[i:i + BATCH], f[i:i + BATCH], pp, seg, thresh)
                             for i in range(0, len(f), BATCH)]) if len(f) else np.zeros(0)
    return scores * _prior_weight(dirs, f, f_prior, focal is not None), dirs, f


def _same_frame(a: np.ndarray, fa: float, b: np.ndarray, fb: float) -> bool:
    """Whether two triplets (rows) are alike: the same up to order and sign within 10 degrees, focals within 20%
    (a refinement started from either would most likely end in the same place)."""
    return abs(math.log(fa / fb)) < 0.2 and np.abs(a @ b.T).max(axis=1).min() > math.cos(math.radians(10))


def _candidates(scores: np.ndarray, dirs: np.ndarray, f: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """The N_REFINED best-scoring hypotheses that differ from each other (in focal or in directions)."""
    picked: list[tuple[np.ndarray, float]] = []
    for i in np.argsort(-scores):
        if len(picked) == N_REFINED or scores[i] <= 0:
            break
        if not any(_same_frame(dirs[i], f[i], d, ff) for d, ff in picked):
            picked.append((dirs[i].T, float(f[i])))
    return picked


# ---------------------------------------------------------------------------------------------------------------
# Refinement


def _label(seg: Segments, vps: np.ndarray, thresh: float) -> np.ndarray:
    r = residuals(vps, seg)  # (3, N)
    labels = np.argmin(r, axis=0)
    labels[r[labels, np.arange(len(seg))] > thresh] = -1
    return labels


@dataclass
class _Refined:
    directions: np.ndarray
    f: float
    pp: np.ndarray
    cov: np.ndarray  # posterior covariance of ([log f], [pp x, pp y])
    rms: float  # inliers' RMS residual, pixels


def _refine(seg: Segments, labels: np.ndarray, directions: np.ndarray, f: float, pp: np.ndarray, *,
            free_f: bool, free_pp: bool, scale: float, f_prior: float, long_side: int,
            covariance: bool = False) -> _Refined:
    """Levenberg-Marquardt on (rotation increment, [log f], [pp]) with Cauchy weights of `scale` pixels over the
    labelled segments, plus the weak priors on f and pp (whitened by NOISE_PX)."""
    sub = seg.subset(labels >= 0)
    lab = labels[labels >= 0]
    n = len(sub)

    def unpack(theta):
        d = _rodrigues(theta[:3]) @ directions
        ff = math.exp(theta[3]) if free_f else f
        p = theta[3 + int(free_f):] if free_pp else pp
        return d, ff, p

    def resid(theta):
        d, ff, p = unpack(theta)
        r = residuals(_vps(d.T, ff, p)[lab], sub, paired=True)
        prior = []
        if free_f:
            prior.append((theta[3] - math.log(f_prior)) / PRIOR_LOG_SIGMA * NOISE_PX)
        if free_pp:
            prior.extend(p / (PP_PRIOR_SIGMA * long_side) * NOISE_PX)
        return np.concatenate([r, prior])

    steps = np.array([1e-6] * 3 + [1e-6] * int(free_f) + [1e-3] * (2 * int(free_pp)))

    def jac(theta, r0):
        return np.stack([(resid(theta + np.eye(len(theta))[j] * h) - r0) / h for j, h in enumerate(steps)], 1)

    def robust(r):
        w = np.ones_like(r)
        w[:n] = 1 / (1 + (r[:n] / scale) ** 2)
        return w, np.sum(np.log1p((r[:n] / scale) ** 2)) * scale ** 2 + np.sum(r[n:] ** 2)

    theta = np.concatenate([np.zeros(3), [math.log(f)] if free_f else [], pp if free_pp else []])
    r = resid(theta)
    w, cost = robust(r)
    lam = 1e-3
    for _ in range(LM_ITERATIONS):
        j = jac(theta, r)
        h = j.T @ (w[:, None] * j)
        step = np.linalg.solve(h + lam * np.diag(np.diag(h) + 1e-12), -(j.T @ (w * r)))
        r_new = resid(theta + step)
        w_new, cost_new = robust(r_new)
        if cost_new < cost:
            converged = cost - cost_new < 1e-8 * cost
            theta, r, w, cost, lam = theta + step, r_new, w_new, cost_new, lam * 0.3
            if converged:
                break
        else:
            lam *= 10
            if lam > 1e6:
                break
    d, ff, p = unpack(theta)
    cov = np.zeros((0, 0))
    if covariance and len(theta) > 3:
        j = jac(theta, r)
        # the noise is the weighted residual scatter, at least NOISE_PX (what the priors were whitened by)
        s2 = max(NOISE_PX ** 2, float(np.sum(w[:n] * r[:n] ** 2) / max(1, n - len(theta))))
        try:
            cov = np.linalg.inv(j.T @ (w[:, None] * j))[3:, 3:] * s2
        except np.linalg.LinAlgError:
            cov = np.full((len(theta) - 3, len(theta) - 3), np.inf)
    return _Refined(d, ff, p, cov, float(np.sqrt(np.mean(r[:n] ** 2))) if n else float("inf"))


def _orthocentre(vps: np.ndarray) -> np.ndarray:
    """Orthocentre of the triangle of three finite vanishing points (rows, homogeneous)."""
    a, b, c = (v[:2] / v[2] for v in vps)
    m = np.stack([b - c, a - c])
    return np.linalg.solve(m, [a @ (b - c), b @ (a - c)])


def fit_manhattan(seg: Segments, width: int, height: int, *, focal: float | None = None,
                  pp: np.ndarray | None = None, seed: int = 0) -> ManhattanFit:
    """Fit a Manhattan frame to segments in coordinates centred on the image centre.

    `focal` (pixels) and `pp` (relative to the centre) fix those intrinsics; otherwise they are estimated.
    """
    rng = np.random.default_rng(seed)
    thresh = inlier_threshold(width, height)
    long_side = max(width, height)
    given_pp = pp is not None
    pp = np.zeros(2) if pp is None else np.asarray(pp, dtype=np.float64)
    free_f = focal is None
    f_prior = (width / 2) / math.tan(math.radians(PRIOR_HFOV_DEG) / 2)

    def rounds(directions, f, pp, free_pp) -> tuple[_Refined, np.ndarray]:
        for i, (reach, scale) in enumerate(ROBUST_SCHEDULE):  # graduated: wide basin first, then precision
            labels = _label(seg, _vps(directions.T, f, pp), reach * thresh)
            if (labels >= 0).sum() < 4:
                raise CalibrationError("too few line segments agree with any vanishing-point triplet")
            fit = _refine(seg, labels, directions, f, pp, free_f=free_f, free_pp=free_pp, scale=scale * thresh,
                          f_prior=f_prior, long_side=long_side, covariance=i == len(ROBUST_SCHEDULE) - 1)
            directions, f, pp = fit.directions, fit.f, fit.pp
        return fit, _label(seg, _vps(directions.T, f, pp), thresh)

    # hypotheses are drawn from and scored on the longest segments only (speed)
    longest = seg.subset(np.argsort(-seg.length)[:SCORED_SEGMENTS])
    best, best_score = None, -1.0
    for directions, f in _candidates(*_hypotheses(longest, width, thresh, rng, focal, pp, f_prior)):
        try:
            fit, labels = rounds(directions, f, pp, False)
        except CalibrationError:
            continue
        score = float(_score(fit.directions.T, fit.f, pp, seg, thresh)
                      * _prior_weight(fit.directions.T, fit.f, f_prior, not free_f))
        if score > best_score:
            best, best_score = (fit, labels), score
    if best is None:
        raise CalibrationError("too few line segments agree with any vanishing-point triplet")
    fit, labels = best
    sigma_log_f = math.sqrt(max(fit.cov[0, 0], 0.0)) if free_f else 0.0
    out = ManhattanFit(fit.f, fit.pp, fit.directions, labels, sigma_log_f, 0.0,
                       "given" if given_pp else "centre", fit.rms)
    if free_f and not given_pp and np.all(np.abs(fit.directions[2]) >= math.sin(math.radians(PP_MIN_ANGLE_DEG))):
        start = _orthocentre(out.vanishing_points())
        if np.linalg.norm(start) < 0.25 * long_side:
            try:
                fit2, labels2 = rounds(fit.directions, fit.f, start, True)
            except CalibrationError:
                return out
            sigma_pp = math.sqrt(max(fit2.cov[1, 1], fit2.cov[2, 2], 0.0))
            if sigma_pp < PP_MAX_SIGMA * long_side:
                return ManhattanFit(fit2.f, fit2.pp, fit2.directions, labels2, math.sqrt(max(fit2.cov[0, 0], 0.0)),
                                    sigma_pp, "orthocentre", fit2.rms)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Checks, confidence and the result


def cluster_vanishing_points(seg: Segments, labels: np.ndarray) -> list[np.ndarray | None]:
    """Per direction, the vanishing point fitted to its segments alone (least squares on v . l = 0 with
    length-weighted unit lines: the eigenvector of the smallest eigenvalue), None with fewer than 2 segments."""
    lines = seg.line
    out: list[np.ndarray | None] = []
    for k in range(3):
        mine = labels == k
        if mine.sum() < 2:
            out.append(None)
            continue
        l = lines[mine] * np.sqrt(seg.length[mine])[:, None]
        out.append(np.linalg.eigh(l.T @ l)[1][:, 0])
    return out


def pair_focals(free_vps: list[np.ndarray | None], f: float, pp: np.ndarray) -> dict[str, float]:
    """Focal length from each pair of well-conditioned (within WELL_CONDITIONED f of the pp) free vanishing
    points, f^2 = -(v_i - c).(v_j - c); pairs that give no real focal are left out."""
    points = {}
    for k, v in enumerate(free_vps):
        if v is not None and abs(v[2]) > 1e-12:
            p = v[:2] / v[2] - pp
            if np.linalg.norm(p) < WELL_CONDITIONED * f:
                points[k] = p
    out = {}
    for i in points:
        for j in points:
            if i < j:
                f2 = -float(points[i] @ points[j])
                if f2 > 0:
                    out[f"{i}{j}"] = math.sqrt(f2)
    return out


def _up_frame(directions: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """cam_from_world rotation (columns X, Y, Z) of the Manhattan directions, with which direction and sign
    each world axis took."""
    up_score = -directions[1]  # image up is -y in OpenCV camera axes
    z = int(np.argmax(np.abs(up_score)))
    rest = [k for k in range(3) if k != z]
    x = max(rest, key=lambda k: abs(directions[0, k]))
    sz = 1 if up_score[z] >= 0 else -1
    sx = 1 if directions[0, x] >= 0 else -1
    cz, cx = sz * directions[:, z], sx * directions[:, x]
    rotation = np.stack([cx, np.cross(cz, cx), cz], 1)
    y = next(k for k in rest if k != x)
    sy = 1 if rotation[:, 1] @ directions[:, y] >= 0 else -1
    return rotation, [x, y, z], [sx, sy, sz]


def _confidence(sigma_hfov_deg: float | None, support: list[int], deviation: float | None, explained: float
                ) -> tuple[float, list[str]]:
    """Confidence in [0, 1], the product of four factors, and the doubts behind the low ones:
      * the posterior std of the field of view (None when the focal was given): exp(-s^2 / (2 CONF_SIGMA_DEG^2));
      * the support of the second-best-supported direction (a focal needs two): min(1, n / CONF_SUPPORT);
      * the largest relative disagreement d of focals from pairs of free vanishing points: exp(-d^2 / (2 CONF_PAIRS^2));
      * the fraction of the segments' total length the triplet explains (texture lines that point nowhere
        leave it low; a frame built from a few chance alignments among them is the usual confident-wrong
        answer): linear from 0 at CONF_EXPLAINED[0] to 1 at CONF_EXPLAINED[1]."""
    doubts = []
    factors = []
    if sigma_hfov_deg is not None:
        factors.append(math.exp(-0.5 * (sigma_hfov_deg / CONF_SIGMA_DEG) ** 2))
        if sigma_hfov_deg > CONF_SIGMA_DEG:
            doubts.append(f"field of view poorly constrained (std {sigma_hfov_deg:.1f} deg: vanishing points near "
                          f"infinity or few lines)")
    second = sorted(support)[-2]
    factors.append(min(1.0, second / CONF_SUPPORT))
    if second < CONF_SUPPORT:
        doubts.append(f"only {second} segments on the second direction")
    if deviation is not None:
        factors.append(math.exp(-0.5 * (deviation / CONF_PAIRS) ** 2))
        if deviation > CONF_PAIRS:
            doubts.append(f"vanishing-point pairs disagree on the focal by {100 * deviation:.0f}%")
    lo, hi = CONF_EXPLAINED
    factors.append(min(1.0, max(0.0, (explained - lo) / (hi - lo))))
    if explained < hi:
        doubts.append(f"only {100 * explained:.0f}% of the line length points at the vanishing points")
    return float(np.prod(factors)), doubts


def calibrate_vp(image: str | os.PathLike | LoadedImage, *, focal: float | None = None,
                 principal: tuple[float, float] | None = None, max_side: int = WORK_SIDE,
                 seed: int = 0) -> CalibrationResult:
    """Calibrate from Manhattan vanishing points; `focal` / `principal` (original pixels) fix those intrinsics
    (the rotation is then the main output). CalibrationError when the image has too few straight lines."""
    loaded = image if isinstance(image, LoadedImage) else load_image(image, max_side)
    if max(loaded.rgb.shape[:2]) > max_side:
        raise ValueError(f"calibrate_vp: image of {loaded.rgb.shape[1]}x{loaded.rgb.shape[0]} px was loaded "
                         f"without max_side={max_side}")
    path = loaded.header.path
    h, w = loaded.rgb.shape[:2]
    if min(w, h) < MIN_SIDE:
        raise CalibrationError(f"{path}: image is {loaded.width}x{loaded.height} px, too small to find "
                               f"vanishing points (needs at least {MIN_SIDE} px per side)")
    sx, sy = loaded.scale
    s = (sx + sy) / 2
    seg = detect_segments(loaded.grey(), max(MIN_LENGTH[0], MIN_LENGTH[1] * math.hypot(w, h)))
    if len(seg) < MIN_SEGMENTS:
        raise CalibrationError(f"{path}: only {len(seg)} straight line segments found (needs {MIN_SEGMENTS}): "
                               f"no vanishing points to measure")
    seg = Segments(seg.p1 - [w / 2, h / 2], seg.p2 - [w / 2, h / 2])
    pp0 = None
    if principal is not None:
        pp0 = np.array([principal[0] * sx - w / 2, principal[1] * sy - h / 2])
    try:
        fit = fit_manhattan(seg, w, h, focal=None if focal is None else focal * s, pp=pp0, seed=seed)
    except CalibrationError as exc:
        raise CalibrationError(f"{path}: {exc}") from None
    rotation, order, signs = _up_frame(fit.directions)
    support = [int((fit.labels == k).sum()) for k in range(3)]
    free = cluster_vanishing_points(seg, fit.labels)
    pairs = pair_focals(free, fit.f, fit.pp)
    deviation = max((abs(v / fit.f - 1) for v in pairs.values()), default=None)
    # d hfov / d log f = -W f / (f^2 + W^2 / 4) for a centred principal point
    sigma_hfov = math.degrees(w * fit.f / (fit.f ** 2 + w ** 2 / 4) * fit.sigma_log_f)
    explained = float(seg.length[fit.labels >= 0].sum() / seg.length.sum())
    confidence, doubts = _confidence(sigma_hfov if focal is None else None, support, deviation, explained)
    f = fit.f / s
    cx, cy = (fit.pp[0] + w / 2) / sx, (fit.pp[1] + h / 2) / sy
    vps = fit.vanishing_points()
    points = {}
    for axis, k, sign in zip(AXES, order, signs):
        v = vps[k] * sign
        finite = abs(v[2]) * AT_INFINITY * fit.f > np.linalg.norm(v[:2])
        entry = {"segments": support[k], "at_infinity": not finite,
                 "direction_camera": (rotation[:, AXES.index(axis)]).tolist()}
        if finite:
            entry["point"] = [(v[0] / v[2] + w / 2) / sx, (v[1] / v[2] + h / 2) / sy]
        points[axis] = entry
    n_infinite = sum(p["at_infinity"] for p in points.values())
    counts = ", ".join(f"{a}: {points[a]['segments']}" for a in AXES)
    pp_text = {"centre": "at the centre", "given": "given",
               "orthocentre": "from the orthocentre of the vanishing points"}[fit.pp_source]
    what = (f"{len(seg)} line segments, {sum(support)} on 3 orthogonal vanishing directions "
            f"({counts}; {n_infinite} at infinity); principal point {pp_text}")
    reason = f"vanishing points: {what}" + (f"; doubts: {'; '.join(doubts)}" if doubts else "")
    extras = {"vanishing_points": points, "segments": len(seg), "inliers": sum(support), "rms_px": fit.rms_px / s,
              "sigma_hfov_deg": sigma_hfov if focal is None else 0.0, "pp_source": fit.pp_source,
              "sigma_pp_px": fit.sigma_pp / s, "explained": explained,
              "pair_focals": {f"{AXES[order.index(int(k[0]))]}{AXES[order.index(int(k[1]))]}": v / s
                              for k, v in pairs.items()},
              "work_size": [w, h]}
    pose = np.eye(4)
    pose[:3, :3] = rotation
    return CalibrationResult.pinhole(f, f, cx, cy, loaded.width, loaded.height, method="vp",
                                     confidence=confidence, reason=reason, cam_from_world=pose, extras=extras)
