"""Catalog benchmark: the single writer's throughput and `lipzoo leaderboard` latency.

    python -m benchmarks.bench_catalog [--models 10000] [--variants 12] [--revisions 5] [--keep DIR]

Targets (issue 3): writing 100,000 result rows under 2 s; `lipzoo leaderboard` over 10,000 models x 12 variants
x 5 revisions under 1 s. The leaderboard is timed in-process (Catalog.leaderboard, the query path) and as a
subprocess `lipzoo leaderboard` command (Python start-up, imports, query and rendering included).
Everything runs in a temp dir on real DuckDB files. Times are wall-clock medians; on a shared, loaded
machine they are noisy upper bounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from catalogs import Catalog, ResultRow  # noqa: E402

WRITE_TARGET_S = 2.0
LEADERBOARD_TARGET_S = 1.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_rows(n_models: int, n_variants: int, revision: int, engine: str = "1") -> list[ResultRow]:
    """n_models x n_variants rows for one revision; the last two variants are lower bounds, ~1% refused/failed."""
    rows = []
    when = T0 + timedelta(days=revision)
    for m in range(n_models):
        hub = ("hf", "timm", "local")[m % 3]
        for v in range(n_variants):
            lower = v >= n_variants - 2
            status = "ok"
            value: float | None = (0.6 if lower else 1.0 + 0.1 * v) * (1.0 + (m * 7919 % 1000) / 100.0) / (1 + revision)
            if (m + v) % 97 == 0:
                status, value = ("refused", None) if v % 2 else ("failed", None)
            rows.append(ResultRow(
                model_id=f"{hub}:org/model-{m:05d}", hub=hub, repo_id=f"org/model-{m:05d}",
                revision=f"rev{revision}-{m:05d}", variant=f"variant-{v:02d}", kind="lower" if lower else "upper",
                status=status, value=value, reason=None if status == "ok" else "benchmark", seconds=0.01 * v,
                device="cpu", params={"iters": 100, "c": 1.5}, architecture="mlp",
                weights_digest=f"sha256:{m:08x}{revision:04x}", engine_version=engine, lipzoo_version="bench",
                computed_at=when + timedelta(microseconds=m)))
    return rows


CPU: list[float] = []  # CPU seconds of the last timed() call (median), this process + its children


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """Median wall seconds (and, in CPU[-1], median CPU seconds: a load-independent cross-check)."""
    times, cpus, out = [], [], None
    for _ in range(repeat):
        c = _cpu()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        cpus.append(_cpu() - c)
    CPU.append(statistics.median(cpus))
    return statistics.median(times), out


def verdict(t: float, target: float) -> str:
    return f"{'PASS' if t < target else 'FAIL'} (target < {target:g} s)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=10_000)
    ap.add_argument("--variants", type=int, default=12)
    ap.add_argument("--revisions", type=int, default=5)
    ap.add_argument("--write-rows", type=int, default=100_000)
    ap.add_argument("--keep", metavar="DIR", help="build the catalogs here and keep them")
    args = ap.parse_args(argv)

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lipzoo-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        return _bench(args, tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _bench(args: argparse.Namespace, tmp: Path) -> int:
    print(f"lipzoo catalog benchmark · {os.cpu_count()} CPU(s) · load average {os.getloadavg()[0]:.2f} · {tmp}")
    results: list[tuple[str, float, float, str]] = []

    def add(name: str, t: float, target: float | None) -> None:
        results.append((name, t, CPU[-1], verdict(t, target) if target else ""))

    # 1) the writer: 100,000 rows into a fresh catalog, then the same batch again (pure upsert path)
    per_model = args.variants
    rows = make_rows(args.write_rows // per_model + 1, per_model, 0)[: args.write_rows]
    cat = Catalog(tmp / "write.duckdb")
    run = cat.begin_run("bench", "cpu")
    t_new, n = timed(lambda: cat.write(rows, run))
    assert n == len(rows), n
    add(f"write {len(rows):,} rows (new catalog)", t_new, WRITE_TARGET_S)
    t_up, _ = timed(lambda: cat.write(rows, run))
    add(f"write {len(rows):,} rows again (upsert over them)", t_up, WRITE_TARGET_S)

    # 2) the big catalog: models x variants x revisions, one write per revision (timed as well)
    big = tmp / "big.duckdb"
    if big.exists():
        big.unlink()
    cat = Catalog(big)
    write_times, write_cpu = [], []
    for rev in range(args.revisions):
        batch = make_rows(args.models, args.variants, rev)
        run = cat.begin_run("bench", "cpu")
        t, _ = timed(lambda b=batch, r=run: cat.write(b, r))
        cat.finish_run(run, "completed")
        write_times.append(t)
        write_cpu.append(CPU[-1])
    total = args.models * args.variants * args.revisions
    CPU.append(write_cpu[write_times.index(max(write_times))])
    add(f"(building it: {args.models * args.variants:,} rows per revision, slowest of {args.revisions})",
        max(write_times), None)
    size_mb = big.stat().st_size / 2**20
    # 100,000 more rows (a new revision of 8,334 models) into the full catalog, in a copy of it
    grown = tmp / "grown.duckdb"
    shutil.copy(big, grown)
    more = make_rows(args.write_rows // per_model + 1, per_model, args.revisions)[: args.write_rows]
    gcat = Catalog(grown)
    t_grown, _ = timed(lambda: gcat.write(more))
    add(f"write {len(more):,} rows into the {total:,}-row catalog", t_grown, WRITE_TARGET_S)
    grown.unlink()

    ro = Catalog(big, read_only=True)
    t_top, lb = timed(lambda: ro.leaderboard(top=50), repeat=5)
    assert len(lb) == 50 and lb[0]["rank"] == 1
    add("leaderboard in-process, top 50 (+ variant columns)", t_top, LEADERBOARD_TARGET_S)
    t_all, lb = timed(lambda: ro.leaderboard(), repeat=3)
    assert len(lb) == args.models
    add(f"leaderboard in-process, all {args.models:,} models (+ variant columns)", t_all, LEADERBOARD_TARGET_S)
    t_var, lb = timed(lambda: ro.leaderboard(variant="variant-03"), repeat=3)
    add("leaderboard in-process, --variant variant-03, all models", t_var, LEADERBOARD_TARGET_S)
    t_open, _ = timed(lambda: Catalog(big, read_only=True), repeat=5)
    add("open read-only (schema check)", t_open, None)

    # 3) the command, as a user runs it: a fresh Python process each time
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # the whole `lipzoo` dispatcher (every command module's register() runs), and the catalog commands alone
    full = "import sys; from lipzoo.cli import main; sys.exit(main(sys.argv[1:]))"
    alone = ("import sys, argparse; from lipzoo.cli.catalog import register; p = argparse.ArgumentParser(); "
             "register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    for label, code, extra in [
        ("`lipzoo leaderboard` subprocess, table, top 50", full, []),
        (f"`lipzoo leaderboard` subprocess, csv, all {args.models:,}", full, ["--format", "csv"]),
        ("catalog commands only, subprocess, table, top 50", alone, []),
        (f"catalog commands only, subprocess, csv, all {args.models:,}", alone, ["--format", "csv"]),
    ]:
        def cmd(code=code, extra=extra) -> None:
            p = subprocess.run([sys.executable, "-c", code, "leaderboard", "--catalog", str(big), *extra],
                               capture_output=True, text=True, cwd=REPO, env=env)
            if p.returncode:
                raise SystemExit(f"lipzoo leaderboard failed: {p.stderr.strip()}")
        t_cmd, _ = timed(cmd, repeat=3)
        add(label, t_cmd, LEADERBOARD_TARGET_S)
    t_imp, _ = timed(lambda: subprocess.run([sys.executable, "-c", "from lipzoo.cli import build_parser; "
                                             "build_parser()"], env=env, cwd=REPO), repeat=3)
    add("(`lipzoo` parser build alone: all command modules' register())", t_imp, None)
    t_py, _ = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], env=env), repeat=3)
    add("(bare `python -c pass` start-up, for reference)", t_py, None)

    print(f"catalog: {args.models:,} models x {args.variants} variants x {args.revisions} revisions = "
          f"{total:,} results, {size_mb:.1f} MiB")
    width = max(len(r[0]) for r in results)
    print(f"  {'':<{width}}     wall      CPU")
    for name, t, cpu, v in results:
        print(f"  {name:<{width}}  {t:7.3f} s {cpu:7.3f} s  {v}")
    print("  (CPU = user+sys seconds of this process and its children; on a loaded machine wall >> CPU)")
    failed = [r for r in results if r[3].startswith("FAIL")]
    print("ALL PASS" if not failed else f"{len(failed)} FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
