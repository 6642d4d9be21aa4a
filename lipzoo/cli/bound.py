"""`lipzoo bound TARGET`: certified bounds of one model (a weight file, timm:NAME, hf:ORG/REPO or a Python factory),
as a table or one JSON object.

Why a thin command: the target is resolved and fetched by `flows.targets` (the hubs' own code, so a target bounds
here exactly as it audits in a zoo), the variants are chosen by `flows.variant_plan` (default set per kind of
model, fitted to --budget), and all the bounding is `lipcore.analyze`; this module parses the options, shows
progress and prints the report (the ratio of each bound to the best measured lower bound is how tight it is).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
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
targets:
  weights.npz | model.safetensors | net.pt   a weight file (a safetensors CNN with lipzoo.arch / timm.arch metadata
                                             is rebuilt as its module)
  timm:NAME[@REV]       a timm architecture: pretrained weights when the hub is reachable, else timm's seeded random
                        init (said in one line); REV pins a catalog revision, e.g. random-init:seed=3
  hf:ORG/REPO[@REV]     a Hugging Face Hub repo at a branch, tag or commit (HF_ENDPOINT, HF_HUB_OFFLINE honoured)
  package.module:function   a Python factory returning a torch.nn.Module (imported only because you named it)

variants (--variant ID, repeatable or comma-separated; also 'upper', 'lower', 'all'):
  default for MLPs: all; for traced models (CNNs, ResNets): naive, eclipse-fast, sh-spectral, optimized,
  lower-sampled, lower-ascent. With --budget the upper bounds are admitted cheapest first while their estimated
  time fits in 3/4 of it; the others are listed as 'skipped: budget' with their estimate.
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

output: what was bounded (target, revision, input space, refused nodes), notes (random init, zero weights),
then a table with each bound, its ratio to the best lower bound (tightness; upper bounds are >= 1), seconds and
status; --json prints one object
  {{"model": ..., "target": {{...}}, "notes": [...], "skipped": {{ID: reason}},
   "results": {{ID: {{"value", "seconds", "status", "reason", ...}}}}, "summary": ...}}
exit codes: 0 when it ran (even if a variant was refused or failed), 2 for bad input

examples:
  lipzoo bound weights.npz --activation relu
  lipzoo bound lyr10n20.mat --activation relu --variant naive --variant eclipse-fast --variant lower-ascent
  lipzoo bound mlp.safetensors --slope -0.1,1.1 --variant upper --json
  lipzoo bound model.pt --activation tanh --budget 60 --option 'sh-gershgorin.c_grid=[1.0,1.9]'
  lipzoo bound timm:resnet18 --input-shape 3,64,64 --budget 120
  lipzoo bound timm:resnet18 --reinit-zero          # re-draw timm's zero-initialised gammas (benchmarking)
  lipzoo bound hf:my-org/my-cnn@main --json
  lipzoo bound mypkg.models:make_net --input-shape 3,32,32
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bound",
        help="certified Lipschitz bounds of one model: weight file, timm:NAME, hf:ORG/REPO, package.module:fn",
        description="Compute certified l2 Lipschitz upper bounds (and measured lower bounds) of one model\n"
                    "(a weight file, a timm architecture, a Hugging Face repo or a Python factory).",
        epilog=_LAZY_EPILOG,
        formatter_class=_LazyEpilogFormatter,
    )
    p.add_argument("path", metavar="TARGET", help="weight file (.npz, .mat, .safetensors, .pt, .pth), timm:NAME[@REV], "
                                                  "hf:ORG/REPO[@REV] or package.module:function")
    p.add_argument("--variant", "-v", action="append", metavar="ID", default=None,
                   help="bound variant to run (repeatable, or comma-separated); default: the set for the model's "
                        "kind, fitted to --budget")
    p.add_argument("--input-shape", nargs="+", metavar="N", default=None,
                   help="input shape without the batch dim, e.g. 3,32,32 or 3 32 32 (where the model cannot say)")
    p.add_argument("--reinit-zero", action="store_true",
                   help="re-draw weight tensors that are identically zero (timm's zero-initialised BatchNorm gammas) "
                        "for benchmarking; timm random inits and factories only, recorded in the revision")
    p.add_argument("--pretrained", choices=["auto", "true", "false"], default="auto",
                   help="timm targets: hub weights when reachable (auto), required (true), or seeded random init")
    p.add_argument("--endpoint", metavar="URL", default=None,
                   help="hf targets: the Hub's URL (default: HF_ENDPOINT, else huggingface.co)")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--activation", "-a", metavar="NAME", help="hidden-layer activation, e.g. relu, tanh, "
                                                                "leaky_relu:0.1 (see the list below)")
    act.add_argument("--slope", metavar="A,B", help="slope interval [A, B] of the activations instead of a name")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                   help="where to compute (default: auto = cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--budget", type=float, metavar="SECONDS", default=None,
                   help="time budget for the whole model: the default variants are fitted to it (skipped: budget) "
                        "and lipcore stops variants past it")
    p.add_argument("--option", "-o", action="append", metavar="VARIANT.KEY=VALUE", default=[],
                   help="a variant option, e.g. 'sh-spectral.c_grid=[1.0,1.5]' (VALUE is read as JSON when "
                        "it parses)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed for the lower bounds, optimizers and random inits (timm, factories)")
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


def _print_table(report: Any, res: Any = None, plan: Any = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 140, highlight=False)
    lower = report.best_lower()
    best = report.best_upper()
    console.print(escape(_summary_line(report)), soft_wrap=True)
    if res is not None:
        for line in [*_what_lines(res, report), *(f"note: {n}" for n in res.notes)]:
            console.print(escape(line), soft_wrap=True)
    table = Table(show_lines=False)
    for col, justify in (("variant", "left"), ("kind", "left"), ("value", "right"), ("ratio", "right"),
                         ("seconds", "right"), ("status", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    skipped = plan.skipped if plan is not None else {}
    from lipcore.variants import VARIANTS

    for vid in [v for v in VARIANTS if v in report.results or v in skipped]:
        if vid in skipped:
            table.add_row(escape(vid), VARIANTS[vid].kind, "-", "-", "-", escape(skipped[vid]))
            continue
        r = report.results[vid]
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


def _parse_shape(raw: list[str] | None) -> tuple[int, ...] | None:
    if not raw:
        return None
    text = ",".join(item.strip().strip("[]()") for item in raw)
    ok = re.fullmatch(r"\s*\d+(\s*[,x\s]\s*\d+)*\s*", text)
    shape = tuple(int(x) for x in re.split(r"[,x\s]+", text.strip())) if ok else ()
    if not shape or any(n <= 0 for n in shape):
        raise CliError(f"bad --input-shape {' '.join(raw)}: expected positive integers without the batch dim, "
                       "e.g. 3,32,32")
    return shape


def _resolve(args: argparse.Namespace, input_shape: tuple[int, ...] | None) -> Any:
    """The target through flows.targets (the hubs' code); hub problems become one-line CliErrors."""
    from flows import targets
    from flows.hubs import HubError
    from flows.refs import Settings

    try:
        t = targets.parse_target(args.path)
    except targets.TargetError as e:
        raise CliError(str(e)) from None
    if args.reinit_zero and t.kind not in ("timm", "factory"):
        raise CliError(f"{args.path}: --reinit-zero re-draws random initialisations: timm:NAME or a factory only")
    settings = Settings(variants=(), device=args.device, input_shape=input_shape, activation=args.activation)
    try:
        return targets.resolve(t, settings, seed=args.seed, reinit_zero=args.reinit_zero,
                               pretrained={"auto": "auto", "true": True, "false": False}[args.pretrained],
                               endpoint=args.endpoint)
    except (targets.TargetError, HubError) as e:
        raise CliError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _target_doc(res: Any) -> dict[str, Any]:
    ref, loaded = res.ref, res.loaded
    return {"text": res.target.text, "kind": res.target.kind, "model_id": ref.model_id, "revision": ref.revision,
            "architecture": loaded.architecture, "weights_digest": loaded.weights_digest, "info": loaded.info}


def _what_lines(res: Any, report: Any) -> list[str]:
    """What was bounded, which input space the bound refers to, what was refused and where."""
    ref, s = res.ref, report.summary or {}
    what = ref.model_id if res.target.kind == "file" else f"{ref.model_id} @ {ref.revision}"
    lines = [f"target: {what}" + (f" ({res.loaded.architecture})" if res.loaded.architecture else "")]
    if s.get("kind") == "graph":
        shape = "x".join(map(str, s.get("input_shape") or [])) or "?"
        where_from = res.loaded.info.get("input_space") or s.get("input_space") or "as the model takes it"
        space = f"input space: {shape}, {where_from}"
        norm = s.get("normalisation") or {}
        if norm.get("raw_pixel_factor"):
            space += (f"; preprocessing (mean/std) not included: for raw [0, 1] pixels multiply by "
                      f"{norm['raw_pixel_factor']:g}")
        lines.append(space)
        bad = s.get("unsupported") or []
        if bad:
            where = "; ".join(f"{u.get('op')} at node {u.get('node')} ({u.get('why')})" for u in bad[:3])
            lines.append(f"refused: {len(bad)} node(s): {where}" + (" ..." if len(bad) > 3 else ""))
    elif s.get("kind") == "mlp":
        lines.append(f"input space: R^{(s.get('widths') or ['?'])[0]} (the first layer's input)")
    return lines


def _compute(args: argparse.Namespace, res: Any, variants: list[str] | None, options: dict[str, Any],
             slope: tuple[float, float] | None) -> tuple[Any, Any]:
    """Load what lipcore bounds (MLP or traced graph, traced once), plan the variants for the budget, run them.
    An .npz file is planned from its headers and handed to lipcore as a path, so a layer too large to load is
    still refused from its shape before anything is read."""
    import lipcore
    from flows import variant_plan
    from lipcore.api import load_target, weight_shapes

    loaded = res.loaded
    act = loaded.activation or args.activation
    shapes = weight_shapes(loaded.target) if isinstance(loaded.target, str | os.PathLike) else None
    source = loaded.target if shapes else load_target(loaded.target, activation=act, slope=slope,
                                                      input_shape=loaded.input_shape, name=res.label,
                                                      bn_eps=args.bn_eps)
    plan = variant_plan.plan(shapes or source, variants, lipcore.resolve_device(args.device), args.budget, options)
    progress = _Progress(plan.run, enabled=sys.stderr.isatty() and not args.json)
    kw = {"device": args.device, "activation": act, "slope": slope, "options": plan.options, "seed": args.seed,
          "progress": progress, "name": res.label, "bn_eps": args.bn_eps, "input_shape": loaded.input_shape}
    try:
        if args.budget is None:
            return lipcore.analyze(source, plan.run, budget_s=None, **kw), plan
        # with a budget the lower bounds (lipcore runs them last) keep their share, whatever the uppers took
        uppers, lowers = variant_plan.split(plan.run)
        t0 = time.monotonic()
        parts = [lipcore.analyze(source, uppers, budget_s=plan.upper_budget_s, **kw)] if uppers else []
        if lowers:  # one call: lower-ascent starts from lower-sampled's points (lipcore's memo)
            left = max(args.budget - (time.monotonic() - t0), variant_plan.LOWER_SHARE * args.budget)
            parts.append(lipcore.analyze(source, lowers, budget_s=left, **kw))
        if not parts:  # everything skipped: still say what the model is
            parts.append(lipcore.analyze(source, [], budget_s=None, **kw))
    finally:
        progress.close()
    return variant_plan.merge(parts), plan


def run(args: argparse.Namespace) -> int:
    variants = _parse_variants(args.variant)
    options = _parse_options(args.option)
    slope = _parse_slope(args.slope)
    shape = _parse_shape(args.input_shape)
    if args.budget is not None and not args.budget > 0:
        raise CliError(f"bad --budget {args.budget}: must be a positive number of seconds")
    if variants is not None:
        from lipcore.api import _validate_variants

        _validate_variants(variants)
    if not os.environ.get("LIPZOO_DEBUG"):  # library deprecation notices (torch.func's jit use) are noise here
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    res = _resolve(args, shape)
    if args.json:
        for note in res.notes:  # the table prints them; in JSON mode stdout is the object alone
            print(f"lipzoo: note: {note}", file=sys.stderr)
    report, plan = _compute(args, res, variants, options, slope)
    if args.json:
        doc = report.to_dict()
        doc.update(target=_target_doc(res), notes=list(res.notes), skipped=dict(plan.skipped))
        print(json.dumps(doc, default=str, indent=2))
    else:
        _print_table(report, res, plan)
    return 0
