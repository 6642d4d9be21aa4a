"""`lipzoo bound PATH`: every bound variant for one weight file, as a table or one JSON object.

Why a thin command: all the work is `lipcore.analyze`; this module only parses the options, shows progress,
and prints the report (the ratio of each bound to the best measured lower bound is how tight it is).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from typing import Any

from . import CliError

_GROUPS = ("all", "upper", "lower")


def _variants_help() -> str:
    from lipcore.variants import VARIANTS

    width = max(len(v) for v in VARIANTS) + 2
    lines = [f"  {vid:<{width}}{spec.kind:<6} {spec.description}" + ("  [needs lipzoo[sdp]]" if spec.needs_sdp else "")
             for vid, spec in VARIANTS.items()]
    return "\n".join(lines)


_LAZY_EPILOG = "(variants, activations and file formats: built when this help is shown)"


class _LazyEpilogFormatter(argparse.RawDescriptionHelpFormatter):
    """The epilog lists lipcore's variants and activations, which imports torch (~2 s): build it only when
    `lipzoo bound --help` is printed, not every time any lipzoo command builds its parser."""

    def add_text(self, text: str | None) -> None:
        super().add_text(_epilog() if text is _LAZY_EPILOG else text)


def _epilog() -> str:
    from lipcore.activations import SUPPORTED

    return f"""\
variants (--variant ID, repeatable or comma-separated; also 'upper', 'lower', 'all'; default: all):
{_variants_help()}

activations (--activation NAME; needed unless the file names it: an 'activation' entry in .npz/.mat/.pt,
or "activation" in the safetensors metadata):
  {', '.join(SUPPORTED)}
  parameters after a colon: leaky_relu:0.1, elu:1.0; one per hidden layer: tanh,tanh,relu
  --slope A,B instead bounds every activation whose slope lies in [A, B], e.g. --slope -0.1,1.1

weight files:
  .npz          arrays W1..WL (out x in) and optional b1..bL; or a 'weights' array of matrices
  .mat          ECLipsE format: cell array `weights` (optional `biases`)
  .safetensors  state dict of Linear (+ BatchNorm1d) layers; metadata "activation" may name it
  .pt / .pth    torch.save(model.state_dict()) of such an MLP (read with weights_only=True)
  A state dict is read as Linear [-> BatchNorm1d] -> act -> ... -> Linear, layers in natural key order.

output: a table with each bound, its ratio to the best lower bound (tightness; upper bounds are >= 1),
seconds and status; --json prints one object
  {{"model": ..., "results": {{ID: {{"value", "seconds", "status", "reason", ...}}}}, "summary": ...}}
exit codes: 0 when it ran (even if a variant was refused or failed), 2 for bad input

examples:
  lipzoo bound weights.npz --activation relu
  lipzoo bound lyr10n20.mat --activation relu --variant naive --variant eclipse-fast --variant lower-ascent
  lipzoo bound mlp.safetensors --slope -0.1,1.1 --variant upper --json
  lipzoo bound model.pt --activation tanh --budget 60 --option 'sh-gershgorin.c_grid=[1.0,1.9]'
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bound",
        help="certified Lipschitz bounds of one MLP weight file (npz, mat, safetensors, pt)",
        description="Compute certified l2 Lipschitz upper bounds (and measured lower bounds) of one MLP\n"
                    "given as a weight file, with every requested bound variant.",
        epilog=_LAZY_EPILOG,
        formatter_class=_LazyEpilogFormatter,
    )
    p.add_argument("path", metavar="PATH", help="weight file: .npz, .mat, .safetensors, .pt or .pth")
    p.add_argument("--variant", "-v", action="append", metavar="ID", default=None,
                   help="bound variant to run (repeatable, or comma-separated); default: all")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--activation", "-a", metavar="NAME", help="hidden-layer activation, e.g. relu, tanh, "
                                                                "leaky_relu:0.1 (see the list below)")
    act.add_argument("--slope", metavar="A,B", help="slope interval [A, B] of the activations instead of a name")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                   help="where to compute (default: auto = cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--budget", type=float, metavar="SECONDS", default=None,
                   help="time budget for the whole model; variants past it report 'failed'")
    p.add_argument("--option", "-o", action="append", metavar="VARIANT.KEY=VALUE", default=[],
                   help="a variant option, e.g. 'sh-spectral.c_grid=[1.0,1.5]' (VALUE is read as JSON when "
                        "it parses)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the lower bounds and optimizers")
    p.add_argument("--bn-eps", type=float, metavar="EPS", default=None,
                   help="BatchNorm eps of the model (state dicts do not store it; else the file's 'bn_eps' metadata, "
                        "else the bound holds for every eps >= 0 and says so)")
    # let `--slope -0.1,1.1` through: argparse would read the negative pair as an unknown option
    p._negative_number_matcher = re.compile(r"^-\d*\.?\d+(e[-+]?\d+)?(,\s*-?\d*\.?\d+(e[-+]?\d+)?)?$", re.I)
    p.set_defaults(func=run)


def _parse_variants(raw: list[str] | None) -> list[str] | None:
    from lipcore.variants import LOWER, UPPER, VARIANTS

    if not raw:
        return None
    out: list[str] = []
    for item in raw:
        for vid in (s.strip() for s in item.split(",")):
            if not vid:
                continue
            if vid == "all":
                out += list(VARIANTS)
            elif vid == "upper":
                out += UPPER
            elif vid == "lower":
                out += LOWER
            elif vid in VARIANTS:
                out.append(vid)
            else:
                raise CliError(f"unknown variant '{vid}'; known: {', '.join(VARIANTS)} (or {', '.join(_GROUPS)})")
    return list(dict.fromkeys(out))


def _parse_options(raw: list[str]) -> dict[str, dict[str, Any]]:
    opts: dict[str, dict[str, Any]] = {}
    for item in raw:
        key, eq, value = item.partition("=")
        variant, dot, name = key.partition(".")
        if not (eq and dot and variant and name):
            raise CliError(f"bad --option '{item}': expected VARIANT.KEY=VALUE, e.g. sh-spectral.c_grid=[1.0]")
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        opts.setdefault(variant.strip(), {})[name.strip()] = parsed
    return opts


def _parse_slope(raw: str | None) -> tuple[float, float] | None:
    if raw is None:
        return None
    parts = raw.strip().strip("[]()").split(",")
    try:
        a, b = (float(x) for x in parts)
    except ValueError:
        raise CliError(f"bad --slope '{raw}': expected two numbers A,B, e.g. --slope 0,1 or --slope=-0.1,1.1") from None
    if not a <= b:
        raise CliError(f"bad --slope '{raw}': need A <= B")
    return a, b


class _Progress:
    """One self-overwriting line on stderr: which variant is running, how many are done (TTY only)."""

    def __init__(self, ids: list[str], enabled: bool) -> None:
        self.ids, self.enabled, self.done = ids, enabled, 0
        if enabled and ids:
            self._show(f"[0/{len(ids)}] running {ids[0]} ...")

    def _show(self, text: str) -> None:
        sys.stderr.write("\r\x1b[K" + text)
        sys.stderr.flush()

    def __call__(self, vid: str, res: Any) -> None:
        if not self.enabled:
            return
        self.done += 1
        last = f"{vid} {res.status} ({res.seconds:.2f}s)"
        nxt = self.ids[self.done] if self.done < len(self.ids) else None
        self._show(f"[{self.done}/{len(self.ids)}] {last}" + (f"; running {nxt} ..." if nxt else ""))

    def close(self) -> None:
        if self.enabled:
            self._show("")


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.6g}"


def _summary_line(report: Any) -> str:
    s = report.summary or {}
    if s.get("kind") == "mlp":
        widths = s.get("widths", [])
        w = "-".join(map(str, widths)) if len(widths) <= 8 else (
            f"{widths[0]}-{'-'.join(map(str, widths[1:4]))}-...-{widths[-1]}")
        acts = ", ".join(f"{n}" for n in s.get("activations", []))
        slopes = ", ".join(f"[{a:g}, {b:g}]" for a, b in s.get("slopes", []))
        return (f"{report.model}: MLP, {s.get('layers')} layers, widths {w}, activation {acts} (slopes {slopes}), "
                f"{s.get('params')} parameters, device {report.device}")
    if s.get("kind") == "graph":
        nodes = ", ".join(f"{n} {op}" for op, n in (s.get("nodes") or {}).items())
        shape = "x".join(map(str, s.get("input_shape") or [])) or "?"
        line = (f"{report.model}: traced graph, input {shape}, {nodes}, {s.get('params')} parameters, "
                f"device {report.device}")
        if s.get("unsupported"):
            line += f"; {len(s['unsupported'])} unsupported node(s), e.g. {s['unsupported'][0].get('op')}"
        return line
    return f"{report.model}: {s.get('kind', 'model')}, device {report.device}"


def _print_table(report: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 140, highlight=False)
    lower = report.best_lower()
    best = report.best_upper()
    console.print(escape(_summary_line(report)), soft_wrap=True)
    table = Table(show_lines=False)
    for col, justify in (("variant", "left"), ("kind", "left"), ("value", "right"), ("ratio", "right"),
                         ("seconds", "right"), ("status", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for vid, r in report.results.items():
        ratio = "-"
        if r.value is not None and lower is not None and lower.value:
            ratio = f"{r.value / lower.value:.4f}"
        status = r.status if not r.reason else f"{r.status}: {r.reason}"
        if r.vacuous:
            status += " (vacuous)"
        mark = " *" if best is not None and vid == best.variant else ""
        table.add_row(escape(vid + mark), r.kind, _fmt(r.value), ratio, f"{r.seconds:.3f}", escape(status))
    console.print(table)
    notes = []
    if best is not None:
        notes.append(f"best certified upper bound: {best.variant} = {best.value:.6g} (*)")
    if lower is not None:
        notes.append(f"best lower bound: {lower.variant} = {lower.value:.6g}; ratio = value / best lower bound")
    else:
        notes.append("ratio needs a lower bound: add --variant lower-ascent (or lower-sampled)")
    for n in notes:
        console.print(escape(n), soft_wrap=True)


def _target(path: str) -> tuple[Any, tuple[int, ...] | None]:
    """A safetensors file whose metadata names its architecture (lipzoo.arch / timm.arch, as the demo zoo's CNNs
    do) becomes that module, so convolutional models reach the graph engine; anything else stays a path."""
    from pathlib import Path

    if Path(path).suffix.lower() != ".safetensors":
        return path, None
    try:
        from safetensors import safe_open

        from flows.hubs import archs
    except ImportError:
        return path, None
    try:
        with safe_open(str(Path(path).expanduser()), framework="pt") as f:
            meta = f.metadata() or {}
            if archs.ARCH_KEY not in meta and archs.TIMM_ARCH_KEY not in meta:
                return path, None
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception:  # unreadable: lipcore's loader reports it in its own words
        return path, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = archs.module_from_state(meta, state, path)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CliError(msg if msg.startswith(path) else f"{path}: {msg}") from None
    return module, archs.input_shape_from(meta)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import lipcore
    from lipcore.api import _validate_variants

    variants = _parse_variants(args.variant)
    options = _parse_options(args.option)
    slope = _parse_slope(args.slope)
    if args.budget is not None and not args.budget > 0:
        raise CliError(f"bad --budget {args.budget}: must be a positive number of seconds")
    if not Path(args.path).expanduser().exists():
        raise CliError(f"{args.path}: file not found")
    ids = _validate_variants(variants)
    target, input_shape = _target(args.path)
    if not os.environ.get("LIPZOO_DEBUG"):  # library deprecation notices (torch.func's jit use) are noise here
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    progress = _Progress(ids, enabled=sys.stderr.isatty() and not args.json)
    try:
        report = lipcore.analyze(target, variants=ids, device=args.device, activation=args.activation,
                                 slope=slope, budget_s=args.budget, options=options, seed=args.seed,
                                 bn_eps=args.bn_eps,
                                 progress=progress, input_shape=input_shape, name=Path(args.path).name)
    finally:
        progress.close()
    if args.json:
        print(json.dumps(report.to_dict(), default=str, indent=2))
    else:
        _print_table(report)
    return 0
