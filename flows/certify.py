"""Certificates: what a certified global l2 Lipschitz bound L of the logit map proves about a classifier.

Statement (proof in docs/certificates.md): for logits f with ||f(x) - f(x')||_2 <= L ||x - x'||_2 and a sample
(x, y) with true-label margin m(x) = f_y(x) - max_{j != y} f_j(x) > 0, every x' with ||x' - x||_2 < m(x) / (sqrt(2) L)
is classified y. So the certified radius is r(x) = m(x) / (sqrt(2) L) (0 when x is misclassified) and the
certified accuracy at eps is the fraction of samples with m(x) > sqrt(2) L eps.

The radius is in the units of the space the bound refers to: the model's own input. When a zoo entry names a
preprocessing (mean/std applied before the model) the eps are in normalised units (`eps_units`).

Why the margins are stored (not only the accuracies): certified accuracy at any eps is then one SQL expression
over the stored row (`lipzoo leaderboard --by certified-accuracy --eps X` for an eps nobody listed).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SQRT2 = math.sqrt(2.0)
DEFAULT_EPS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
BUILTINS = {"digits": Path(__file__).resolve().parent.parent / "deploy" / "zoos" / "demo" / "digits" / "eval.npz"}


class EvalError(ValueError):
    """An evaluation set or preprocessing that cannot be used (one line, names the file)."""


@dataclass
class EvalSet:
    name: str  # "builtin:digits", or the file/folder path as given
    x: np.ndarray  # (N, ...) float, raw units
    y: np.ndarray  # (N,) int
    digest: str  # sha256 of x and y bytes (identity of the data, not of the file)

    def __len__(self) -> int:
        return len(self.y)


def _digest(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()


def load_eval(spec: Any, base_dir: str | Path | None = None, limit: int | None = None) -> EvalSet:
    """`spec`: "builtin:digits", a path to an .npz with arrays x and y, or a folder of images with labels.csv
    (lines `file,label`); relative paths are relative to `base_dir` (the manifest's folder)."""
    name = str(spec)
    if name.startswith("builtin:"):
        key = name.split(":", 1)[1]
        if key not in BUILTINS:
            raise EvalError(f"eval {name!r}: unknown built-in (known: {', '.join('builtin:' + k for k in BUILTINS)})")
        path = BUILTINS[key]
    else:
        path = Path(name).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
    if not path.exists():
        raise EvalError(f"eval {name!r}: {path} does not exist")
    if path.is_dir():
        x, y = _load_folder(path)
    else:
        try:
            with np.load(path) as z:
                x, y = np.asarray(z["x"]), np.asarray(z["y"])
        except (KeyError, ValueError, OSError) as e:
            raise EvalError(f"eval {name!r}: {path}: needs an .npz with arrays x and y ({e})") from e
    if len(x) != len(y) or len(y) == 0:
        raise EvalError(f"eval {name!r}: x has {len(x)} samples, y has {len(y)}")
    if not np.all(np.isfinite(x)):
        raise EvalError(f"eval {name!r}: x has NaN/Inf values")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x = x.astype(np.float32)
    y = y.astype(np.int64).reshape(-1)
    return EvalSet(name, x, y, _digest(x, y))


def _load_folder(path: Path) -> tuple[np.ndarray, np.ndarray]:
    labels = path / "labels.csv"
    if not labels.exists():
        raise EvalError(f"eval folder {path}: needs labels.csv with lines `file,label`")
    from PIL import Image

    xs, ys = [], []
    for line in labels.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.lower().startswith("file,"):
            continue
        f, lab = line.rsplit(",", 1)
        img = np.asarray(Image.open(path / f.strip()), dtype=np.float32) / 255.0
        xs.append(img.transpose(2, 0, 1) if img.ndim == 3 else img[None])
        ys.append(int(lab))
    return np.stack(xs), np.asarray(ys)


def preprocess_spec(raw: Any) -> dict[str, Any] | str | None:
    """{"mean": [...], "std": [...]} (per channel or scalar) -> the same, validated; None for none; "timm": the
    mean/std of the model's own timm `pretrained_cfg` (resolved when the model is loaded)."""
    if not raw:
        return None
    if raw == "timm":
        return "timm"
    if not isinstance(raw, dict) or set(raw) - {"mean", "std"}:
        raise EvalError("preprocess must be a table with mean and std")
    mean = np.atleast_1d(np.asarray(raw.get("mean", 0.0), dtype=np.float64))
    std = np.atleast_1d(np.asarray(raw.get("std", 1.0), dtype=np.float64))
    if np.any(std <= 0) or not np.all(np.isfinite(mean)):
        raise EvalError("preprocess: std must be positive and mean finite")
    return {"mean": mean.tolist(), "std": std.tolist()}


def apply_preprocess(x: np.ndarray, pre: dict[str, Any] | None) -> np.ndarray:
    """(x - mean) / std, broadcast per channel over (N, C, ...) or as scalars."""
    if not pre:
        return x
    mean, std = np.asarray(pre["mean"]), np.asarray(pre["std"])
    shape = (1, -1) + (1,) * (x.ndim - 2) if mean.size > 1 and x.ndim >= 2 else ()
    return ((x - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)


def check_eps(raw: Any) -> tuple[float, ...]:
    vals = [raw] if isinstance(raw, int | float) else list(raw)
    if not vals or not all(isinstance(v, int | float) and v >= 0 and math.isfinite(v) for v in vals):
        raise EvalError("eps must be a list of non-negative numbers")
    return tuple(sorted({float(v) for v in vals}))


# -- the math --------------------------------------------------------------------------------------------
def true_margins(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """m_i = f_{y_i}(x_i) - max_{j != y_i} f_j(x_i): positive iff x_i is classified y_i (ties count as wrong)."""
    logits = np.asarray(logits, dtype=np.float64)
    idx = np.arange(len(y))
    top = logits[idx, y]
    other = logits.copy()
    other[idx, y] = -np.inf
    return top - other.max(axis=1)


def certified_radii(margins: np.ndarray, bound: float) -> np.ndarray:
    """r_i = max(m_i, 0) / (sqrt(2) L): no ||delta||_2 < r_i changes the prediction of sample i."""
    if not (bound > 0 and math.isfinite(bound)):
        raise ValueError(f"the Lipschitz bound must be a positive finite number (got {bound})")
    return np.maximum(np.asarray(margins, dtype=np.float64), 0.0) / (SQRT2 * bound)


def certified_accuracy(margins: np.ndarray, bound: float, eps: float) -> float:
    """Fraction of samples classified correctly with certified radius > eps (so every ||delta|| <= eps is safe)."""
    m = np.asarray(margins, dtype=np.float64)
    return float(np.mean((m > 0) & (certified_radii(m, bound) > eps)))


def summarize(margins: np.ndarray, bound: float, eps: tuple[float, ...]) -> dict[str, Any]:
    m = np.asarray(margins, dtype=np.float64)
    r = certified_radii(m, bound)
    return {"n": int(len(m)), "clean_accuracy": float(np.mean(m > 0)), "eps": list(eps),
            "certified_accuracy": [certified_accuracy(m, bound, e) for e in eps],
            "median_radius": float(np.median(r)), "margins": m.tolist()}


def timm_preprocess(module: Any) -> dict[str, Any]:
    """mean/std from a timm model's pretrained_cfg (what timm's own transforms apply before the model)."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:
        raise EvalError('preprocess = "timm" but the model has no pretrained_cfg mean/std')
    spec = preprocess_spec({"mean": list(cfg["mean"]), "std": list(cfg["std"])})
    assert isinstance(spec, dict)
    return spec


# -- forward passes --------------------------------------------------------------------------------------
def logits_fn(target: Any, activation: str | None = None, input_shape: tuple[int, ...] | None = None) -> Any:
    """A numpy batch -> logits function for what a hub's fetch returned (module, MLP, or weight file)."""
    import torch
    from torch import nn

    import lipcore
    from lipcore.api import load_target

    if isinstance(target, nn.Module):
        mod = target.eval()
        dtype = next((p.dtype for p in mod.parameters()), torch.float32)

        def f(x: np.ndarray) -> np.ndarray:
            xb = torch.as_tensor(x, dtype=dtype)
            if input_shape:
                xb = xb.reshape((len(x), *input_shape))
            with torch.no_grad():
                return mod(xb).double().numpy()
        return f
    mlp = target if isinstance(target, lipcore.MLP) else load_target(target, activation=activation)
    fn = mlp.torch_callable("cpu", torch.float64)

    def g(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return fn(torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float64)).numpy()
    return g


def batched(f: Any, x: np.ndarray, batch: int = 512) -> np.ndarray:
    return np.concatenate([f(x[i:i + batch]) for i in range(0, len(x), batch)])


def preprocess_key(pre: dict[str, Any] | None) -> str:
    return json.dumps(pre, sort_keys=True) if pre else "none"


# -- the audit stage ---------------------------------------------------------------------------------------
def _same(old: dict[str, Any], variant: str, bound: float, engine: str, digest: str, pre: str,
          eps: tuple[float, ...]) -> bool:
    return (old["variant"] == variant and old["engine_version"] == engine and old["dataset_digest"] == digest
            and old["preprocess"] == pre and tuple(old["eps"]) == tuple(eps)
            and abs(float(old["bound"]) - bound) <= 1e-12 * abs(bound))


def certify_models(found: list[tuple[Any, Any]], catalog: Any, run_id: str | None, base_dir: Path | None,
                   force: bool = False) -> dict[str, Any]:
    """For every (ModelRef, Entry) whose settings name an eval set: (re)compute the certificates of its revision
    from the catalog's certified upper bounds, when the bound, the data, the preprocessing or the eps changed.
    Runs in the flow's thread after the bounds are written (so it sees this audit's bounds); writes through the
    catalog's single writer. Returns {"certified": n, "certificates_up_to_date": n, "certificate_problems": [...]}"""
    import logging
    import time

    from catalogs import lipzoo_version
    from catalogs.certificates import CertificateRow, dump_pre

    from . import hubs

    log = logging.getLogger("lipzoo.flows")
    out: dict[str, Any] = {"certified": 0, "certificates_up_to_date": 0, "certificate_problems": [],
                           "certify_seconds": 0.0}
    t_all = time.perf_counter()
    cache: dict[tuple[str, str], EvalSet] = {}
    rows: list[Any] = []
    for ref, entry in found:
        cs = entry.settings.certify or {}
        if not cs.get("eval"):
            continue
        try:
            key = (str(cs["eval"]), str(base_dir))
            if key not in cache:
                cache[key] = load_eval(cs["eval"], base_dir)
            data = cache[key]
            pre = cs.get("preprocess")
            loaded = None
            if pre == "timm":  # known only once the model is loaded
                loaded = hubs.fetch(ref, entry.settings)
                pre = timm_preprocess(loaded.target)
            pre_s = dump_pre(pre)
            eps = tuple(cs.get("eps") or DEFAULT_EPS)
            bounds, existing = catalog.certificate_inputs(ref.model_id, ref.revision)
            scopes = ["best", *[v for v in cs.get("certify_variants", ()) if v in bounds]]
            old = {e["scope"]: e for e in existing}
            todo = []
            for scope in scopes:
                b = bounds.get(scope)
                if b is None:
                    continue
                variant, value, engine, _vac = b
                if not force and scope in old and _same(old[scope], variant, value, engine, data.digest, pre_s, eps):
                    out["certificates_up_to_date"] += 1
                    continue
                todo.append((scope, variant, value, engine))
            if not todo:
                continue
            t0 = time.perf_counter()
            loaded = loaded or hubs.fetch(ref, entry.settings)
            shape = loaded.input_shape or entry.settings.input_shape
            f = logits_fn(loaded.target, loaded.activation or entry.settings.activation, shape)
            logits = batched(f, apply_preprocess(data.x, pre))
            if logits.ndim != 2 or int(data.y.max()) >= logits.shape[1] or int(data.y.min()) < 0:
                raise EvalError(f"labels of {data.name} do not index the model's {logits.shape[-1]} logits")
            m = true_margins(logits, data.y)
            secs = time.perf_counter() - t0
            for scope, variant, value, engine in todo:
                s = summarize(m, value, eps)
                rows.append(CertificateRow(
                    model_id=ref.model_id, revision=ref.revision, scope=scope, variant=variant, engine_version=engine,
                    dataset=data.name, dataset_digest=data.digest, preprocess=pre_s,
                    eps_units="normalised" if pre else "raw", bound=value, n=s["n"],
                    clean_accuracy=s["clean_accuracy"], median_radius=s["median_radius"], eps=s["eps"],
                    certified_accuracy=s["certified_accuracy"], margins=s["margins"], seconds=secs,
                    lipzoo_version=lipzoo_version(), run_id=run_id))
        except Exception as e:  # a bad eval set must not lose the bounds: say so, keep going
            from .tasks import one_line

            log.warning("certificates of %s skipped: %s", ref.model_id, one_line(e))
            out["certificate_problems"].append({"model_id": ref.model_id, "reason": one_line(e)})
    if rows:
        try:  # the bounds are already safe; a held lock here costs only the certificates (the next audit redoes them)
            catalog.write_certificates(rows, run_id)
        except Exception as e:
            from .tasks import one_line

            log.warning("certificates not written: %s", one_line(e))
            out["certificate_problems"].append({"model_id": "*", "reason": f"not written: {one_line(e)}"})
            rows = []
    out["certified"] = len(rows)
    out["certify_seconds"] = round(time.perf_counter() - t_all, 3)
    out["certificate_problems"] = out["certificate_problems"][:50]
    return out
