"""Parallel audits are deterministic: the lower bounds (forward-mode AD through torch.func, whose dual levels are
process-wide) ran from several worker threads at once failed at random ("Trying to access a forward AD level with
an invalid index", 2-16 per 200 small MLPs). Real Prefect flow, real thread-pool workers, real DuckDB catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

pytestmark = pytest.mark.usefixtures("prefect_harness")

N_MODELS = 200
OPTIONS = {"lower-ascent": {"starts": 4, "steps": 20, "jv_steps": 10}, "lower-sampled": {"samples": 32}}


def _zoo_dir(root: Path, n: int) -> Path:
    d = root / "zoo"
    d.mkdir()
    for i in range(n):
        torch.manual_seed(i)
        act = "tanh" if i % 2 else "relu"
        m = nn.Sequential(nn.Linear(5, 7), nn.Tanh() if act == "tanh" else nn.ReLU(), nn.Linear(7, 3))
        save_file(m.state_dict(), str(d / f"m{i:03d}.safetensors"), metadata={"activation": act})
    return d


def test_200_models_with_four_thread_workers_have_no_failed_variant(tmp_path):
    from catalogs import Catalog
    from flows.audit import audit_zoo

    d = _zoo_dir(tmp_path, N_MODELS)
    cat = tmp_path / "c.duckdb"
    zoo = {"name": "par", "variants": ["naive", "lower-sampled", "lower-ascent"], "options": OPTIONS,
           "models": [{"hub": "local", "path": str(d), "pattern": "*.safetensors"}]}
    s = audit_zoo(zoo, catalog=str(cat), device="cpu", runner="threads:4")
    assert (s["audited"], s["ok"], s["failed"], s["variants_failed"]) == (N_MODELS, N_MODELS, 0, 0), s["failures"]
    with Catalog(cat, read_only=True).connect() as con:
        n, bad, keys = con.execute("SELECT count(*), count(*) FILTER (WHERE status <> 'ok'), "
                                   "count(DISTINCT (model_id, revision, variant)) FROM results").fetchone()
    assert (n, bad, keys) == (3 * N_MODELS, 0, 3 * N_MODELS)


def test_lower_bounds_from_many_threads_equal_the_serial_values():
    """Same seeds, same values: a thread-parallel round gives bit-identical lower bounds to a serial one."""
    from concurrent.futures import ThreadPoolExecutor

    import lipcore

    def mk(i: int) -> nn.Module:
        torch.manual_seed(i)
        return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))

    models = [mk(i) for i in range(48)]

    def run(m: nn.Module) -> tuple:
        r = lipcore.analyze(m, variants=["lower-sampled", "lower-ascent"], options=OPTIONS)
        return tuple((v.status, v.value) for v in r.results.values())

    serial = [run(m) for m in models]
    with ThreadPoolExecutor(6) as ex:
        parallel = list(ex.map(run, models))
    assert all(st == "ok" for row in parallel for st, _ in row)
    assert parallel == serial
