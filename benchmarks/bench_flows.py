"""The audit pipeline's targets, measured through the real CLI in fresh subprocesses.

1. demo audit, end to end from a fresh process into an empty catalog (target: under 180 s);
2. the same command again, nothing new (target: under 15 s and zero bound computations);
3. pipeline overhead per model at 200 small local models: (flow time - sum of lipcore times) / 200
   (target: under 0.3 s).

Run: `python -m benchmarks.bench_flows [--json out.json] [--models 200] [--skip-demo]`. Each number comes from
one run on whatever load the machine has; on a shared 2-core box treat them as upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LIPZOO = [sys.executable, "-c", "import sys; from lipzoo.cli import main; sys.exit(main())"]
TARGETS = {"demo_audit_s": 180.0, "second_audit_s": 15.0, "overhead_per_model_s": 0.3}


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, int, dict[str, Any]]:
    t0 = time.perf_counter()
    p = subprocess.run([*LIPZOO, *args, "--json", "-q"], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    try:
        summary = json.loads(p.stdout[p.stdout.index("{"):]) if "{" in p.stdout else {}
    except json.JSONDecodeError:
        summary = {}
    if not summary:
        sys.stderr.write(p.stderr[-3000:])
    return wall, p.returncode, summary


def make_models(folder: Path, n: int) -> None:
    import torch
    from safetensors.torch import save_file
    from torch import nn

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        torch.manual_seed(i)
        m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
        save_file(m.state_dict(), str(folder / f"m{i:04d}.safetensors"), metadata={"activation": "relu"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out: dict[str, Any] = {"load_avg_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="lipzoo-bench-flows-") as tmp:
        t = Path(tmp)
        if not args.skip_demo:
            cat = str(t / "demo.duckdb")
            wall, rc, s = run_cli(["audit", "--catalog", cat], env)
            out.update(demo_audit_s=round(wall, 1), demo_rc=rc, demo_flow_s=s.get("seconds"),
                       demo_models=s.get("audited"), demo_ok=s.get("ok"), demo_refused=s.get("refused"),
                       demo_failed=s.get("failed"), demo_variants_failed=s.get("variants_failed"),
                       demo_lipcore_s=s.get("lipcore_seconds"))
            wall, rc, s = run_cli(["audit", "--catalog", cat], env)
            out.update(second_audit_s=round(wall, 1), second_rc=rc, second_flow_s=s.get("seconds"),
                       second_audited=s.get("audited"), second_up_to_date=s.get("up_to_date"),
                       second_lipcore_s=s.get("lipcore_seconds"))
        folder = t / "many"
        make_models(folder, args.models)
        wall, rc, s = run_cli(["audit", "--local", str(folder), "--variant", "naive", "--variant", "eclipse-fast",
                               "--catalog", str(t / "many.duckdb")], env)
        n = s.get("audited") or 0
        out.update(many_models=n, many_rc=rc, many_wall_s=round(wall, 1), many_flow_s=s.get("seconds"),
                   many_lipcore_s=s.get("lipcore_seconds"), overhead_per_model_s=s.get("overhead_per_model_s"))
    out["load_avg_end"] = os.getloadavg()[0]

    checks = []
    if not args.skip_demo:
        checks.append(("demo audit, fresh process", out["demo_audit_s"], TARGETS["demo_audit_s"],
                       out["demo_rc"] == 0))
        checks.append(("second audit, nothing new", out["second_audit_s"], TARGETS["second_audit_s"],
                       out["second_audited"] == 0 and not out["second_lipcore_s"]))
    ov = out.get("overhead_per_model_s")
    checks.append((f"overhead per model at {out['many_models']} models", ov, TARGETS["overhead_per_model_s"],
                   out["many_rc"] == 0 and out["many_models"] == args.models))
    ok_all = True
    print(f"load average {out['load_avg_start']:.1f} -> {out['load_avg_end']:.1f} (2 cores, shared: noisy)")
    for name, value, target, extra_ok in checks:
        ok = value is not None and value < target and extra_ok
        ok_all &= ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value} (target < {target})")
    if not args.skip_demo:
        print(f"      demo: {out['demo_models']} models, {out['demo_ok']} ok, {out['demo_refused']} refused, "
              f"{out['demo_failed']} failed, {out['demo_variants_failed']} variant results failed; flow "
              f"{out['demo_flow_s']} s, lipcore {out['demo_lipcore_s']} s (summed over threads)")
        print(f"      second: flow {out['second_flow_s']} s, {out['second_audited']} audited, "
              f"{out['second_up_to_date']} up to date, lipcore {out['second_lipcore_s']} s")
    print(f"      many: flow {out['many_flow_s']} s, lipcore {out['many_lipcore_s']} s, wall {out['many_wall_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
