"""Operator graphs of traced models: what the graph bounds (naive, the Fourier recursion family) work on.

Why torch.export: it traces timm models that torch.fx cannot (vgg's control flow) into a small ATen
vocabulary. We interpret the exported graph once on a real input, taint every node that depends on the model
input, and classify each tainted node as one of

* linear operators: ``conv`` (1-D/2-D, stride, padding, dilation, groups), ``linear`` (last dim), ``bn`` and
  per-channel ``scale`` (folded into the preceding conv/linear when it is their only consumer), ``avgpool``,
  ``gap`` (global mean), ``reshape`` (flatten/permute/transpose/view: isometries), ``identity`` (dropout in eval,
  clone, dtype casts, adding a constant bias), ``slice`` (a coordinate projection, norm <= 1);
* ``act``: elementwise slope-restricted activations (lipcore.activations gives [alpha, beta]);
* ``maxpool`` (l2 constant sqrt(prod ceil(k_i/s_i))), ``add``/``sub`` of two input-dependent tensors, ``cat``;
* ``norm``: LayerNorm/GroupNorm, globally Lipschitz only with max|gamma|/sqrt(eps) (a *vacuous* bound);
* ``unsupported``: anything else, with the reason (dot-product attention and x*g(x) gating are not globally
  Lipschitz). Building the graph never fails on those: the lower bounds still run on the module; the upper
  bounds refuse naming the first unsupported node.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, Refused
from . import ops
from .ops import NOT_LIPSCHITZ, UNKNOWN, sample_shape


@dataclass
class Node:
    """One input-dependent operation. `inputs` are the names of the input-dependent arguments."""

    name: str
    op: str
    inputs: list[str]
    shape: tuple[int, ...]  # output shape without the batch dimension
    attrs: dict[str, Any] = field(default_factory=dict)
    target: str = ""  # the ATen op it came from

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.attrs.get("in_shape", ())


@dataclass
class Unsupported:
    node: str
    op: str
    why: str
    category: str  # NOT_LIPSCHITZ | UNKNOWN

    def message(self) -> str:
        return f"unsupported operator {self.op} at node {self.node}: {self.why}"


@dataclass
class GraphModel:
    """A traced model as a DAG of classified nodes, plus the eval-mode module for the lower bounds."""

    name: str
    input_shape: tuple[int, ...]
    nodes: list[Node]
    output: str
    module: nn.Module
    unsupported: list[Unsupported] = field(default_factory=list)
    input_space: str = "after the model's input normalisation"
    normalisation: dict[str, Any] | None = None
    n_params: int = 0
    _by_name: dict[str, Node] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        return self._by_name[name]

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.name)
        return out

    @property
    def vacuous_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "norm"]

    def require_supported(self) -> None:
        """Raise Refused naming the first operator that prevents every certified upper bound."""
        bad = [u for u in self.unsupported if u.category == NOT_LIPSCHITZ] or self.unsupported
        if bad:
            raise Refused(bad[0].message())

    def summary(self) -> dict[str, Any]:
        counts = Counter(n.op for n in self.nodes if n.op not in ("input", "identity"))
        return {
            "kind": "graph",
            "input_shape": list(self.input_shape),
            "nodes": dict(sorted(counts.items())),
            "params": self.n_params,
            "input_space": self.input_space,
            "normalisation": self.normalisation,
            "unsupported": [{"node": u.node, "op": u.op, "why": u.why, "category": u.category}
                            for u in self.unsupported],
            "vacuous_ops": [n.name for n in self.vacuous_nodes],
        }

    def torch_callable(self, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float64) -> Callable[[torch.Tensor], torch.Tensor]:
        """The eval-mode module on `device`/`dtype` (converted in place: it is our private copy)."""
        self.module.to(device=device, dtype=dtype)
        return self.module


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _disable_fused_attn(module: nn.Module) -> None:
    """timm's fused SDPA has no forward-mode AD on CPU: the lower bounds need the explicit softmax path."""
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            try:
                m.fused_attn = False
            except Exception:  # pragma: no cover - read-only attribute on some custom module
                pass


def _default_input_shape(module: nn.Module) -> tuple[int, ...] | None:
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(module, attr, None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            return tuple(int(s) for s in cfg["input_size"])
    return None


class _Builder:
    """Walks the exported graph once on a real input: taints what depends on it, parses every tainted call
    through the op table (`lipcore.graph.ops`), and records what each graph node must reproduce."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.known: set[str] = set()
        self.unsupported: list[Unsupported] = []
        self.taint: set[str] = set()
        self.alias: dict[str, str] = {}  # fx node name -> graph node name (identities collapse)
        self.items: dict[str, ops.Items] = {}  # multi-output calls, read by their getitems
        # (fx name, graph node or alias source, fx inputs): increments that must agree on a replay
        self.checks: list[tuple[str, str, list[str]]] = []

    def src(self, fx_name: str) -> str:
        return self.alias.get(fx_name, fx_name)

    def add(self, node: Node) -> None:
        self.nodes.append(node)
        self.known.add(node.name)

    def bad(self, name: str, op: str, shape: tuple[int, ...], inputs: list[str], why: str, cat: str) -> None:
        self.unsupported.append(Unsupported(name, op, why, cat))
        inputs = [i for i in inputs if i in self.known]
        self.add(Node(name, "unsupported", inputs, shape, {"why": why, "category": cat}, op))

    def tainted_names(self, a: Any) -> list[str]:
        found: list[str] = []
        torch.fx.node.map_arg(a, lambda n: found.append(n.name) or n)
        return [f for f in found if f in self.taint]  # fx names (the replay reads their traced values)

    def call(self, n: torch.fx.Node, val: Any, env: dict[str, Any]) -> None:
        op = ops.op_name(n.target)
        shape = sample_shape(val)
        ins = [self.src(a.name) for a in n.all_input_nodes if a.name in self.taint]
        if op in ops.NO_DATA:
            return
        if op == "getitem":
            return self.getitem(n, val, ins)
        fn = ops.PARSERS.get(op)
        if fn is None:
            return self.bad(n.name, op, shape, ins, "no Lipschitz rule for this operator", UNKNOWN)
        try:
            fx_args = ops.bind(n.target, n.args, dict(n.kwargs))
        except TypeError as e:
            return self.bad(n.name, op, shape, ins, f"cannot read its arguments ({e})", UNKNOWN)
        values = {k: _val(env, v) for k, v in fx_args.items()}
        c = ops.Call(n.name, op, n.target, values, {k: self.tainted_names(v) for k, v in fx_args.items()}, val,
                     fx=fx_args)
        parsed = fn(c)
        for p in parsed.items if isinstance(parsed, ops.Items) else [parsed]:
            c.read.update(p.args if isinstance(p, ops.Emit) else [p.arg] if isinstance(p, ops.Alias) else [])
        unread = [k for k in c.values if k not in c.read]
        if unread and not isinstance(parsed, ops.Refuse):
            parsed = ops.Refuse(f"argument '{unread[0]}' is not read by lipzoo's rule for {op}")
        self.emit(n.name, op, shape, ins, c, parsed, val)

    def emit(self, name: str, op: str, shape: tuple[int, ...], ins: list[str], c: ops.Call, parsed: ops.Parsed,
             val: Any) -> None:
        if isinstance(parsed, ops.Items):
            parsed.call = c
            self.items[name] = parsed
            return
        if isinstance(parsed, ops.Refuse):
            return self.bad(name, op, shape, ins, parsed.why, parsed.category)
        if isinstance(parsed, ops.Alias):
            raw = c.tainted[parsed.arg][0]
            self.alias[name] = self.src(raw)
            self.checks.append((name, "", [raw]))
            return
        if parsed.kind == "cat":
            return self.cat(name, op, shape, c, parsed.attrs["dim"])

        raw = [t for a in parsed.args for t in c.tainted[a]]
        attrs = {"in_shape": c.in_shape(parsed.args[0]), **parsed.attrs}
        self.add(Node(name, parsed.kind, [self.src(t) for t in raw], shape, attrs, op))
        self.checks.append((name, name, raw))

    def getitem(self, n: torch.fx.Node, val: Any, ins: list[str]) -> None:
        parent, idx = n.args[0].name, int(n.args[1])
        shape = sample_shape(val)
        if parent in self.items:  # a multi-output op has no graph node: its items read the op's own inputs
            c0 = self.items[parent].call
            ins = list(dict.fromkeys(self.src(t) for ts in c0.tainted.values() for t in ts))
        else:
            ins = [self.src(i) for i in ins]
        if parent not in self.items:
            return self.bad(n.name, "getitem", shape, ins, "item of an operator lipzoo did not read", UNKNOWN)
        items = self.items[parent]
        if not 0 <= idx < len(items.items):
            return self.bad(n.name, "getitem", shape, ins, f"item {idx} of a {len(items.items)}-output op",
                            UNKNOWN)
        c = items.call
        self.emit(n.name, c.op, shape, ins, c, items.items[idx], val)

    def cat(self, name: str, op: str, shape: tuple[int, ...], c: ops.Call, dim: int) -> None:
        parts, fx_parts = [], []
        for fxn, v in zip(c.fx["tensors"], c.values["tensors"], strict=True):
            tainted = isinstance(fxn, torch.fx.Node) and fxn.name in self.taint
            parts.append((self.src(fxn.name) if tainted else None, sample_shape(v)))
            fx_parts.append(fxn.name if isinstance(fxn, torch.fx.Node) else None)
        if None in fx_parts:
            return self.bad(name, op, shape, [p for p, _ in parts if p], "concatenates a literal tensor", UNKNOWN)
        attrs = {"in_shape": next(s for p, s in parts if p is not None), "dim": dim, "parts": parts,
                 "fx_parts": fx_parts, "stack": c.op == "stack"}
        self.add(Node(name, "cat", [p for p, _ in parts if p is not None], shape, attrs, op))
        self.checks.append((name, name, fx_parts))


def _val(env: dict[str, Any], a: Any) -> Any:
    if isinstance(a, torch.fx.Node):
        return env[a.name]
    if isinstance(a, list | tuple):
        return type(a)(_val(env, x) for x in a)
    return a


def _clone(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return a.clone()
    if isinstance(a, list | tuple):
        return type(a)(_clone(x) for x in a)
    return a


@contextlib.contextmanager
def _quiet_tracer_logs() -> Iterator[None]:
    """A model that cannot be traced makes torch log a multi-page traceback (fake-tensor meta failures) before
    it raises; the raise becomes our one-line InputError, so silence the log while exporting."""
    loggers = [logging.getLogger(n) for n in ("torch._subclasses.fake_tensor", "torch._dynamo", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _interpret(gm: torch.fx.GraphModule, x: torch.Tensor, on_call: Callable[..., None] | None = None
               ) -> dict[str, Any]:
    """Run the exported graph node by node, keeping every value (and handing each call to `on_call`)."""
    env: dict[str, Any] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n.name] = x
        elif n.op == "get_attr":
            obj: Any = gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            env[n.name] = obj
        elif n.op == "call_module":
            env[n.name] = None  # torch.export's input-shape guards: no data flow
        elif n.op == "call_function":
            args, kwargs = _val(env, n.args), {k: _val(env, v) for k, v in n.kwargs.items()}
            if getattr(getattr(n.target, "_schema", None), "is_mutable", False):  # relu_, add_: keep the inputs
                args, kwargs = _clone(args), {k: _clone(v) for k, v in kwargs.items()}
            with torch.no_grad():
                env[n.name] = n.target(*args, **kwargs)
            if on_call is not None:
                on_call(n, env)
    return env


def build_graph(module: nn.Module, input_shape: Sequence[int] | None = None, name: str | None = None) -> GraphModel:
    """Trace `module` (eval mode) into a GraphModel. Never fails on unsupported operators: it records them.

    Every tainted call goes through the op table; every node's reading is then replayed against the traced
    values on two inputs (`_verify`), so a node that does not compute what the model computes is refused."""
    src = name or type(module).__name__
    shape = tuple(int(s) for s in input_shape) if input_shape else _default_input_shape(module)
    if not shape:
        raise InputError(src, "no input shape known for this model; pass --input-shape C,H,W")
    mod = copy.deepcopy(module).eval().to(torch.float32)
    for p in mod.parameters():
        p.requires_grad_(False)
    _disable_fused_attn(mod)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), _quiet_tracer_logs():
            ep = torch.export.export(mod, (x,))
        gm = ep.module()
    except Exception as e:  # noqa: BLE001 - any tracing failure is an input problem for this model
        default = _default_input_shape(module)
        hint = (f"; the model's own input shape is {','.join(map(str, default))}, this trace used "
                f"{','.join(map(str, shape))}" if default and tuple(default) != shape else "")
        raise InputError(src, f"cannot trace the model with torch.export ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}){hint}") from None

    b = _Builder(src)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise InputError(src, f"expected one tensor input, the traced graph has {len(placeholders)}")
    b.taint.add(placeholders[0].name)
    b.add(Node(placeholders[0].name, "input", [], shape))

    def on_call(n: torch.fx.Node, env: dict[str, Any]) -> None:
        if not any(a.name in b.taint for a in n.all_input_nodes):
            return
        b.taint.add(n.name)
        b.call(n, env[n.name], env)

    env = _interpret(gm, x, on_call)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    outs = out.args[0]
    if isinstance(outs, list | tuple) and len(outs) != 1:
        raise InputError(src, f"model returns {len(outs)} outputs; one tensor expected")
    o = outs[0] if isinstance(outs, list | tuple) else outs
    if not isinstance(o, torch.fx.Node) or o.name not in b.taint:
        raise InputError(src, "the model output does not depend on its input")
    out_name = b.src(o.name)
    x2 = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    _verify(b, env, _interpret(gm, x2))
    n_params = sum(int(p.numel()) for p in module.parameters())
    g = GraphModel(name=src, input_shape=shape, nodes=b.nodes, output=out_name, module=mod,
                   unsupported=b.unsupported, n_params=n_params)
    _fold_pads(g)
    _fold_affine(g)
    g = _drop_identities(g)
    _input_space(g, module)
    return g


# relative tolerance of the replay check: float64 replays against float32 traced values
REPLAY_RTOL = 1e-3


def _verify(b: _Builder, env1: dict[str, Any], env2: dict[str, Any]) -> None:
    """Each node's reading, replayed on the traced values of its inputs for two model inputs, must reproduce
    the increment of the traced value (constants cancel). A node that does not is refused: its reading dropped
    an argument or a shape fact. Aliases (identities, added constants) must have their source's increment."""
    by_name = {n.name: n for n in b.nodes}
    for fx_name, gname, raw in b.checks:
        v1, v2 = env1.get(fx_name), env2.get(fx_name)
        if not isinstance(v1, torch.Tensor):
            continue
        dv = (v1.to(torch.float64) - v2.to(torch.float64)).reshape(-1)
        node = by_name.get(gname)
        if node is None:  # an alias of its argument
            f1, f2 = env1[raw[0]], env2[raw[0]]
        elif node.op == "cat":
            join = torch.stack if node.attrs.get("stack") else torch.cat
            f1, f2 = (join([e[fx] for fx in raw], node.attrs["dim"]) for e in (env1, env2))
        else:
            try:
                f1 = ops.replay(node, [env1[i] for i in raw])
                f2 = ops.replay(node, [env2[i] for i in raw])
            except Exception as e:  # noqa: BLE001 - a reading that cannot even run is a wrong reading
                _refuse_node(b, node, f"lipzoo's reading of it cannot be replayed ({type(e).__name__}: {e})")
                continue
        df = (f1.to(torch.float64) - f2.to(torch.float64)).reshape(-1)
        if df.shape != dv.shape:
            err = math.inf
        else:
            scale = max(float(dv.norm()), float(df.norm()), 1e-30)
            floor = 1e-6 * max(float(v1.abs().max()), float(v2.abs().max()), 1.0) * math.sqrt(dv.numel())
            err = float((df - dv).norm()) / scale if float((df - dv).norm()) > floor else 0.0
        if err > REPLAY_RTOL:
            target = node
            why = (f"the traced op does not compute what lipzoo reads it as (relative error {err:.2g} on a replay): "
                   "an argument or shape fact is not understood")
            if target is None:
                b.unsupported.append(Unsupported(fx_name, "alias", why, UNKNOWN))
            else:
                _refuse_node(b, target, why)


def _refuse_node(b: _Builder, node: Node, why: str) -> None:
    b.unsupported.append(Unsupported(node.name, node.target, why, UNKNOWN))
    node.attrs = {"why": why, "category": UNKNOWN, "in_shape": node.in_shape}
    node.op = "unsupported"


def _drop_identities(g: GraphModel) -> GraphModel:
    """Remove identity nodes (folded affine maps), rewiring their consumers to their input."""
    alias: dict[str, str] = {}
    keep = []
    for n in g.nodes:
        n.inputs = [alias.get(i, i) for i in n.inputs]
        if "parts" in n.attrs:
            n.attrs["parts"] = [(alias.get(p, p) if p else p, s) for p, s in n.attrs["parts"]]
        if n.op == "identity":
            alias[n.name] = n.inputs[0]
        else:
            keep.append(n)
    return GraphModel(name=g.name, input_shape=g.input_shape, nodes=keep, output=alias.get(g.output, g.output),
                      module=g.module, unsupported=g.unsupported, n_params=g.n_params)


def _fold_pads(g: GraphModel) -> None:
    """Fold a constant spatial pad into every conv reading it (conv(pad(x)) is a conv of x with a larger offset
    and zero outside: exact). A pad read by anything else stays a gather node (a restart in the engine)."""
    cons = g.consumers()
    for n in g.nodes:
        pad = n.attrs.get("pad") if n.op == "gather" else None
        if pad is None or not cons[n.name] or n.name == g.output:
            continue
        convs = [g.node(c) for c in cons[n.name]]
        d = len(n.in_shape) - 1
        if len(pad) != 2 * d or any(p < 0 for p in pad) or not all(
                c.op == "conv" and len(c.inputs) == 1 and len(c.attrs["weight"].shape) - 2 == d for c in convs):
            continue
        lo = tuple(pad[2 * (d - 1 - i)] for i in range(d))
        hi = tuple(pad[2 * (d - 1 - i) + 1] for i in range(d))
        for c in convs:
            a = c.attrs
            a["padding"] = tuple(p + q for p, q in zip(a["padding"], lo, strict=True))
            a["pad_hi"] = tuple(p + q for p, q in zip(a["pad_hi"], hi, strict=True))
            a["in_shape"] = n.in_shape
            a.setdefault("folded", []).append(n.name)
        n.op = "identity"
        n.attrs = {"in_shape": n.in_shape, "folded_into": [c.name for c in convs]}


def _fold_affine(g: GraphModel) -> None:
    """Fold a per-output-channel scale (BatchNorm in eval, layer scale) into the conv/linear it follows.

    Only when the conv/linear output has no other consumer: then the composite is one linear operator and its
    norm is what both the naive bound and the recursion should see.
    """
    cons = g.consumers()
    for n in g.nodes:
        if n.op != "scale" or len(n.inputs) != 1:
            continue
        p = g.node(n.inputs[0])
        if p.op not in ("conv", "linear") or cons[p.name] != [n.name] or p.name == g.output:
            continue
        cdim = 0 if p.op == "conv" else len(p.shape) - 1
        s = n.attrs["scale"]
        if n.attrs["channel_dim"] is None:
            vec = s.reshape(()).expand(p.shape[cdim])
        elif n.attrs["channel_dim"] == cdim:
            vec = s
        else:
            continue
        w = p.attrs["weight"]
        p.attrs["weight"] = w * vec.reshape(-1, *([1] * (w.dim() - 1)))
        p.attrs.setdefault("folded", []).append(n.name)
        n.op = "identity"
        n.attrs = {"in_shape": n.in_shape, "folded_into": p.name}


def _input_space(g: GraphModel, module: nn.Module) -> None:
    """Which input the bound refers to: raw pixels if the module normalises inside, else the normalised input."""
    cons = g.consumers()
    first = cons.get(g.nodes[0].name, [])
    if any(g.node(c).op == "scale" for c in first):
        g.input_space = "raw pixels (the model normalises its input itself)"
    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("std") is not None:
        std = [float(s) for s in cfg["std"]]
        g.normalisation = {"mean": [float(m) for m in cfg.get("mean", ())], "std": std,
                           "raw_pixel_factor": 1.0 / min(std),
                           "note": "multiply a bound by raw_pixel_factor for raw [0,1] pixel inputs"}


def describe(g: GraphModel) -> str:
    """One line per node (debugging aid)."""
    lines = []
    for n in g.nodes:
        extra = {k: v for k, v in n.attrs.items() if not isinstance(v, torch.Tensor | np.ndarray) and k != "in_shape"}
        lines.append(f"{n.name:30s} {n.op:11s} {n.shape!s:18s} <- {','.join(n.inputs)} {extra}")
    return "\n".join(lines)
