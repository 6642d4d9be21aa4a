"""SDP baselines: LipSDP-Neuron, LipSDP-Layer (Fazlyab et al. 2019) and ECLipsE (Xu & Sivaranjani 2024).

Why these are here although the project's point is to avoid SDPs: they are the reference the closed-form and
optimised bounds are measured against (theory §3), on nets small enough for a solver.

Three rules keep the numbers honest (theory §7.4–7.5):

* **Balance first.** Each W_k is divided by the ECLipsE-Fast stage scale a_k, so the balanced net's Fast
  recursion has λ_max(Γ̂_k) = 1 at every layer and the solver sees O(1) data. Exact by homogeneity: every
  LipSDP-type bound of the raw net is ∏a_k times that of the balanced net, with Λ_k = Λ̃_k / ∏_{j≤k} a_j².
  Without it Clarabel has reported "optimal" at values 12× off.
* **Certify.** The solver's ρ is never reported. Its multipliers (Λ_k = T_k/ρ for LipSDP, ECLipsE's own
  Λ_k = L_k/2 sequence) are mapped back to the raw net and handed to `recursion.certify`, which re-runs the
  exact Schur-complement recursion with Cholesky checks. If rounding makes a check fail, Λ is backed off
  (Λ ← tΛ, t < 1, which can only make every M_k more positive, theory §2 monotonicity); the solver value goes to
  params as `solver_value`.
* **Guard the size.** Interior-point cost grows like the fifth-to-sixth power of the chordal clique size
  (n_{k-1} + n_k); beyond the limits below a variant is refused with the numbers, pointing at `optimized`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import CertificationError, Refused
from ..variants import Context
from .network import MLP

SDP_EXTRA = "needs the sdp extra: pip install 'lipzoo[sdp]'"

# Size guard. Interior-point cost grows like the fifth-to-sixth power of the chordal clique size (two adjacent
# widths): estimated seconds = SECONDS_PER_CLIQUE40 · Σ_k ((n_{k-1} + n_k)/40)^5, calibrated on this 2-core box
# (theory §6 and benchmarks/README.md: LipSDP-Neuron 30×20 ≈ 26 s, 3×40 ≈ 25 s, 5×40 ≈ 150 s, 3×60 ≈ 3 min; ECLipsE's
# per-layer SDPs cost about the same per clique). Both limits are overridable per variant with
# ctx.opt(variant, "max_neurons" | "max_seconds", ...).
SECONDS_PER_CLIQUE40 = 1.0
CLIQUE_EXPONENT = 5
LIMITS: dict[str, dict[str, float]] = {
    "lipsdp-neuron": {"max_neurons": 1000, "max_seconds": 90},
    "lipsdp-layer": {"max_neurons": 1000, "max_seconds": 90},
    "eclipse": {"max_neurons": 1000, "max_seconds": 90},
}
BACKOFF = (1.0, 1 - 1e-6, 1 - 1e-4, 0.999, 0.99, 0.95, 0.8)


# ---------------------------------------------------------------------------------------------------------
# shared plumbing


def _import_cvxpy() -> Any:
    try:
        import clarabel  # noqa: F401
        import cvxpy as cp
    except ImportError as e:
        raise Refused(SDP_EXTRA) from e
    return cp


def _label(variant: str) -> str:
    return {"lipsdp-neuron": "LipSDP-Neuron", "lipsdp-layer": "LipSDP-Layer", "eclipse": "ECLipsE"}[variant]


def estimated_seconds(net: MLP) -> float:
    """Rough single-thread Clarabel time for one of these SDPs on this net (see the calibration note above)."""
    w = net.widths
    return SECONDS_PER_CLIQUE40 * sum(((w[k] + w[k + 1]) / 40) ** CLIQUE_EXPONENT for k in range(len(w) - 2))


def size_check(net: MLP, ctx: Context, variant: str) -> dict[str, Any]:
    """Refuse (with the numbers) nets whose SDP would take more than ~1-2 minutes on a CPU."""
    widths = net.widths
    neurons = int(sum(widths[1:-1]))
    clique = max((widths[k] + widths[k + 1] for k in range(len(widths) - 2)), default=0)
    est = estimated_seconds(net)
    lim = LIMITS[variant]
    max_neurons = int(ctx.opt(variant, "max_neurons", lim["max_neurons"]))
    max_seconds = float(ctx.opt(variant, "max_seconds", lim["max_seconds"]))
    if neurons > max_neurons:
        raise Refused(f"{_label(variant)} refused: {neurons} neurons > limit {max_neurons} "
                      f"(set option max_neurons); use 'optimized'")
    if est > max_seconds:
        raise Refused(f"{_label(variant)} refused: estimated solve time {est:.0f} s > limit {max_seconds:g} s "
                      f"({neurons} neurons, largest clique {clique}; set option max_seconds); use 'optimized'")
    return {"neurons": neurons, "clique": clique, "estimated_seconds": round(est, 1)}


def balance(net: MLP) -> tuple[list[np.ndarray], np.ndarray]:
    """(balanced weights W_k / a_k, log a_k): ECLipsE-Fast stage scales, so each balanced stage has λ_max(Γ̂) = 1.

    Exact by homogeneity; the scales only condition the solver, so any positive a_k would be valid.
    """
    ws = net.weights
    n0 = ws[0].shape[1]
    m_inv = np.eye(n0)
    out, logs = [], []
    for k, w in enumerate(ws):
        if k < len(ws) - 1:
            act = net.activations[k]
            coef = max((act.alpha + act.beta) ** 2, (act.beta - act.alpha) ** 2, 1e-300)
            g = coef * w @ m_inv @ w.T
        else:
            g = w @ m_inv @ w.T
        g = 0.5 * (g + g.T)
        lmax = float(np.linalg.eigvalsh(g)[-1])
        a2 = lmax if lmax > 0 and math.isfinite(lmax) else 1.0
        wb = w / math.sqrt(a2)
        out.append(wb)
        logs.append(0.5 * math.log(a2))
        if k < len(ws) - 1:
            gb = g / a2
            m = 2 * np.eye(g.shape[0]) - gb  # Λ = I on the balanced stage: eigenvalues in [1, 2]
            m_inv = np.linalg.inv(0.5 * (m + m.T))
            m_inv = 0.5 * (m_inv + m_inv.T)
    return out, np.asarray(logs)


def _raw_lambdas(lam_bal: list[np.ndarray], log_a: np.ndarray) -> list[np.ndarray]:
    """Balanced-net multipliers → raw-net multipliers: Λ_k = Λ̃_k / ∏_{j≤k} a_j²."""
    cum = np.cumsum(2 * log_a)
    return [lam * math.exp(-cum[k]) for k, lam in enumerate(lam_bal)]


def _certify_backoff(net: MLP, lam_raw: list[np.ndarray], ctx: Context) -> tuple[float, float]:
    """certify() with Λ ← tΛ backoff for rounding failures. Returns (certified value, t used)."""
    from .recursion import certify

    floored = []
    for lam in lam_raw:
        lam = np.asarray(lam, dtype=np.float64).reshape(-1)
        top = float(np.max(lam)) if lam.size and np.all(np.isfinite(lam)) else 0.0
        if not top > 0:
            raise CertificationError("solver returned no positive multipliers")
        floored.append(np.maximum(lam, 1e-10 * top))  # a zero multiplier would make M_k singular
    last: Exception | None = None
    for t in BACKOFF:
        ctx.check_deadline()
        try:
            return float(certify(net, [t * lam for lam in floored])), t
        except CertificationError as e:
            last = e
    raise CertificationError(f"solver multipliers did not certify after backoff: {last}")


def _solve(cp: Any, prob: Any, ctx: Context, variant: str) -> tuple[str, str]:
    """Clarabel (time-limited by the context's deadline); SCS only if Clarabel fails. Returns (solver, status)."""
    left = ctx.time_left()
    limit = ctx.opt(variant, "time_limit", None)
    if left is not None:
        limit = left if limit is None else min(float(limit), left)
    opts: dict[str, Any] = {}
    if limit is not None:
        if limit <= 0:
            ctx.check_deadline()
        opts["time_limit"] = float(max(limit, 1.0))
    solver = str(ctx.opt(variant, "solver", "CLARABEL")).upper()
    errors = []
    for name in ([solver] if solver != "CLARABEL" else ["CLARABEL", "SCS"]):
        try:
            if name == "CLARABEL":
                prob.solve(solver=cp.CLARABEL, **opts)
            else:
                kw = {"eps": 1e-9, "max_iters": 200_000}
                if limit is not None:
                    kw["time_limit_secs"] = float(max(limit, 1.0))
                prob.solve(solver=cp.SCS, **kw)
        except (cp.error.SolverError, ArithmeticError, ValueError) as e:
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if prob.status in ("optimal", "optimal_inaccurate", "user_limit") or (
                prob.status is not None and "inaccurate" in prob.status):
            return name, str(prob.status)
        errors.append(f"{name}: status {prob.status}")
    ctx.check_deadline()
    raise CertificationError("SDP solver failed: " + "; ".join(errors))


def _trivial(net: MLP) -> tuple[float, dict[str, Any]] | None:
    """Nets with nothing to optimise: a zero layer (constant function) or a single linear layer."""
    if any(not np.any(w) for w in net.weights):
        return 0.0, {"zero_layer": True}
    if net.depth == 1:
        from .recursion import certify

        return float(certify(net, [])), {"single_layer": True}
    return None


# ---------------------------------------------------------------------------------------------------------
# LipSDP


def _lipsdp(net: MLP, ctx: Context, variant: str, per_neuron: bool) -> tuple[float, dict[str, Any]]:
    cp = _import_cvxpy()
    sizes = size_check(net, ctx, variant)
    triv = _trivial(net)
    if triv is not None:
        return triv
    t0 = time.perf_counter()
    wb, log_a = balance(net)
    L = len(wb)
    acts = net.activations
    rho = cp.Variable(nonneg=True)
    ts = [cp.Variable(w.shape[0], nonneg=True) if per_neuron else cp.Variable(nonneg=True) for w in wb[:-1]]

    def tdiag(k: int) -> Any:  # T_k as a cvxpy matrix (k is 0-based hidden index)
        return cp.diag(ts[k]) if per_neuron else ts[k] * np.eye(wb[k].shape[0])

    def wtw(k: int) -> Any:  # W_kᵀ T_k W_k
        w = wb[k]
        if per_neuron:
            return w.T @ cp.diag(ts[k]) @ w
        return ts[k] * (w.T @ w)

    sizes_blk = [wb[0].shape[1]] + [w.shape[0] for w in wb[:-1]]
    nb = len(sizes_blk)
    blocks: list[list[Any]] = [[np.zeros((sizes_blk[i], sizes_blk[j])) for j in range(nb)] for i in range(nb)]
    for i in range(nb):
        if i == 0:
            diag = rho * np.eye(sizes_blk[0])
        else:
            diag = 2 * tdiag(i - 1)
        if i < L - 1 and acts[i].p != 0:  # p-term of the next layer's multipliers (always valid to keep)
            diag = diag + 2 * acts[i].p * wtw(i)
        if i == nb - 1:
            diag = diag - wb[-1].T @ wb[-1]
        blocks[i][i] = diag
        if i < nb - 1:
            m2 = acts[i].alpha + acts[i].beta  # 2m
            off = -m2 * (wb[i].T @ tdiag(i))
            blocks[i][i + 1] = off
            blocks[i + 1][i] = off.T
    Z = cp.bmat(blocks)
    prob = cp.Problem(cp.Minimize(rho), [0.5 * (Z + Z.T) >> 0])
    solver, status = _solve(cp, prob, ctx, variant)
    if rho.value is None or any(t.value is None for t in ts):
        raise CertificationError(f"{solver} stopped ({status}) without a solution")
    rho_b = float(rho.value)
    if not (rho_b > 0 and math.isfinite(rho_b)):
        raise CertificationError(f"solver returned rho = {rho_b}")
    lam_bal = []
    for k, t in enumerate(ts):
        tv = np.asarray(t.value, dtype=np.float64).reshape(-1)
        if not per_neuron:
            tv = np.full(wb[k].shape[0], float(tv[0]))
        lam_bal.append(tv / rho_b)
    solver_value = math.sqrt(rho_b) * math.exp(float(log_a.sum()))
    value, t_used = _certify_backoff(net, _raw_lambdas(lam_bal, log_a), ctx)
    params = {"solver": solver, "status": status, "solver_value": solver_value, "backoff": t_used,
              "solve_seconds": round(time.perf_counter() - t0, 3), **sizes}
    return value, params


def lipsdp_neuron(net: MLP, ctx: Context) -> tuple[float, dict[str, Any]]:
    """LipSDP-Neuron: one multiplier per hidden neuron, solved on balanced weights, certified by the recursion."""
    return _lipsdp(net, ctx, "lipsdp-neuron", per_neuron=True)


def lipsdp_layer(net: MLP, ctx: Context) -> tuple[float, dict[str, Any]]:
    """LipSDP-Layer: one multiplier per hidden layer (T_k = t_k I), certified like LipSDP-Neuron."""
    return _lipsdp(net, ctx, "lipsdp-layer", per_neuron=False)


# ---------------------------------------------------------------------------------------------------------
# ECLipsE


def _m_next(m_prev: np.ndarray, w: np.ndarray, lam: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """M_k = 2Λ − 4m² Λ W S^{-1} Wᵀ Λ with S = M_{k-1} + 2p WᵀΛW (Cholesky solves; raises if not PD)."""
    p, m = alpha * beta, 0.5 * (alpha + beta)
    s = m_prev + 2 * p * (w.T * lam[None, :]) @ w if p != 0 else m_prev
    c = np.linalg.cholesky(0.5 * (s + s.T))
    y = np.linalg.solve(c, w.T * lam[None, :])  # C^{-1} Wᵀ Λ
    mk = 2 * np.diag(lam) - 4 * m * m * (y.T @ y)
    mk = 0.5 * (mk + mk.T)
    np.linalg.cholesky(mk)
    return mk


def eclipse(net: MLP, ctx: Context) -> tuple[float, dict[str, Any]]:
    """ECLipsE: per hidden layer k, maximise s subject to M_k(Λ_k) ⪰ s·W_{k+1}ᵀW_{k+1} (one small SDP each).

    The same stage problem as eclipse-nn's `sdp()` (there with L_k = 2Λ_k and the Schur form through K^{1/2});
    written here as the equivalent LMI [[S_{k-1}(Λ), −2m WᵀΛ], [−2m ΛW, 2Λ − s W_{k+1}ᵀW_{k+1}]] ⪰ 0, which also
    keeps the p-term S_{k-1} = M_{k-1} + 2pWᵀΛW (required for αβ < 0, tighter and still valid for αβ > 0;
    eclipse-nn drops it). Greedy stage by stage, so ≥ LipSDP-Neuron.
    """
    v = "eclipse"
    cp = _import_cvxpy()
    sizes = size_check(net, ctx, v)
    triv = _trivial(net)
    if triv is not None:
        return triv
    t0 = time.perf_counter()
    wb, log_a = balance(net)
    L = len(wb)
    m_prev = np.eye(wb[0].shape[1])
    log_mu = 0.0  # M̃_{k-1} = e^{log_mu} · m_prev (the balanced net's true M)
    lam_bal: list[np.ndarray] = []
    solvers, statuses, shrinks = set(), set(), 0
    for k in range(L - 1):
        ctx.check_deadline()
        act = net.activations[k]
        w, w_next = wb[k], wb[k + 1]
        n = w.shape[0]
        lam = cp.Variable(n, nonneg=True)
        s = cp.Variable()
        D = cp.diag(lam)
        top = m_prev + 2 * act.p * (w.T @ D @ w) if act.p != 0 else m_prev
        off = -(act.alpha + act.beta) * (w.T @ D)
        bot = 2 * D - s * (w_next.T @ w_next)
        Z = cp.bmat([[top, off], [off.T, bot]])
        prob = cp.Problem(cp.Maximize(s), [0.5 * (Z + Z.T) >> 0])
        solver, status = _solve(cp, prob, ctx, v)
        solvers.add(solver)
        statuses.add(status)
        if lam.value is None:
            raise CertificationError(f"ECLipsE layer {k + 1}: {solver} stopped ({status}) without a solution")
        lv = np.asarray(lam.value, dtype=np.float64).reshape(-1)
        top_l = float(np.max(lv)) if lv.size and np.all(np.isfinite(lv)) else 0.0
        if not top_l > 0:
            raise CertificationError(f"ECLipsE layer {k + 1}: solver returned no positive multipliers")
        lv = np.maximum(lv, 1e-10 * top_l)
        for t in BACKOFF:  # rounding: shrink until M_k passes its Cholesky check
            try:
                mk = _m_next(m_prev, w, t * lv, act.alpha, act.beta)
                lv = t * lv
                break
            except np.linalg.LinAlgError:
                shrinks += 1
        else:
            raise CertificationError(f"ECLipsE layer {k + 1}: stage multipliers not admissible after backoff")
        lam_bal.append(lv * math.exp(log_mu))
        d = float(np.max(np.diag(mk)))
        m_prev = mk / d
        log_mu += math.log(d)
    value, t_used = _certify_backoff(net, _raw_lambdas(lam_bal, log_a), ctx)
    params = {"solver": ",".join(sorted(solvers)), "status": ",".join(sorted(statuses)), "backoff": t_used,
              "stage_backoffs": shrinks, "solve_seconds": round(time.perf_counter() - t0, 3), **sizes}
    return value, params


VARIANT_FUNCS: dict[str, Callable[[MLP, Context], tuple[float, dict[str, Any]]]] = {
    "lipsdp-neuron": lipsdp_neuron, "lipsdp-layer": lipsdp_layer, "eclipse": eclipse,
}
