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
import operator
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import activations as acts
from ..errors import InputError, Refused

NOT_LIPSCHITZ = "not_lipschitz"
UNKNOWN = "unknown"


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
def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, int | float):
        return (int(v),) * n
    v = tuple(int(x) for x in v)
    return v * n if len(v) == 1 and n > 1 else v


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


_ACT_TARGETS = {
    "relu": "relu", "relu_": "relu", "silu": "silu", "silu_": "silu", "gelu": "gelu", "gelu_": "gelu",
    "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh", "tanh_": "tanh", "hardswish": "hardswish",
    "hardswish_": "hardswish", "hardsigmoid": "hardsigmoid", "hardsigmoid_": "hardsigmoid", "mish": "mish",
    "mish_": "mish", "softplus": "softplus", "elu": "elu", "elu_": "elu", "leaky_relu": "leaky_relu",
    "leaky_relu_": "leaky_relu", "hardtanh": "hardtanh", "hardtanh_": "hardtanh", "relu6": "relu6",
    "selu": "selu", "selu_": "selu", "celu": "celu", "celu_": "celu",
}
_IDENTITY = {"dropout", "dropout_", "clone", "contiguous", "alias", "detach", "lift_fresh_copy", "_to_copy",
             "to", "type_as", "feature_dropout", "alpha_dropout", "native_dropout"}
_RESHAPE = {"flatten", "reshape", "view", "_unsafe_view", "permute", "transpose", "squeeze", "unsqueeze", "t",
            "unflatten", "movedim", "swapaxes"}
_SKIP = {"_assert_tensor_metadata", "sym_size", "_assert_async", "sym_constrain_range_for_size"}


def _op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    s = getattr(target, "__name__", str(target))
    # aten.conv2d.default -> conv2d ; OpOverload names look like 'conv2d.default'
    return s.split(".")[0]


class _Builder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.unsupported: list[Unsupported] = []
        self.taint: set[str] = set()
        self.alias: dict[str, str] = {}  # fx node name -> graph node name (identity ops collapse)

    def src(self, fx_name: str) -> str:
        return self.alias.get(fx_name, fx_name)

    def add(self, node: Node) -> None:
        self.nodes.append(node)

    def bad(self, name: str, op: str, shape: tuple[int, ...], inputs: list[str], why: str, cat: str) -> None:
        self.unsupported.append(Unsupported(name, op, why, cat))
        self.add(Node(name, "unsupported", inputs, shape, {"why": why, "category": cat}, op))


def _val(env: dict[str, Any], a: Any) -> Any:
    if isinstance(a, torch.fx.Node):
        return env[a.name]
    if isinstance(a, list | tuple):
        return type(a)(_val(env, x) for x in a)
    return a


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in v.shape[1:]) if isinstance(v, torch.Tensor) else ()


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


def build_graph(module: nn.Module, input_shape: Sequence[int] | None = None, name: str | None = None) -> GraphModel:
    """Trace `module` (eval mode) into a GraphModel. Never fails on unsupported operators: it records them."""
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
    env: dict[str, Any] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise InputError(src, f"expected one tensor input, the traced graph has {len(placeholders)}")
    out_name = None
    if True:  # noqa: SIM108 - graph values are computed under no_grad below (activations need grad)
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                env[n.name] = x
                b.taint.add(n.name)
                b.add(Node(n.name, "input", [], shape))
                continue
            if n.op == "get_attr":
                obj: Any = gm
                for part in str(n.target).split("."):
                    obj = getattr(obj, part)
                env[n.name] = obj
                continue
            if n.op == "output":
                outs = n.args[0]
                o = outs[0] if isinstance(outs, list | tuple) else outs
                if isinstance(outs, list | tuple) and len(outs) != 1:
                    raise InputError(src, f"model returns {len(outs)} outputs; one tensor expected")
                out_name = b.src(o.name)
                continue
            if n.op == "call_module" and "guard" in str(n.target):
                env[n.name] = None  # torch.export's input-shape guards: no data flow
                continue
            if n.op != "call_function":
                raise InputError(src, f"unexpected graph node {n.op} {n.target}")
            args = _val(env, n.args)
            kwargs = {k: _val(env, v) for k, v in n.kwargs.items()}
            with torch.no_grad():
                val = n.target(*args, **kwargs)
            env[n.name] = val
            tainted_in = [a.name for a in n.all_input_nodes if a.name in b.taint]
            if not tainted_in:
                continue
            b.taint.add(n.name)
            _classify(b, n, args, kwargs, val, env)
    if out_name is None:
        raise InputError(src, "traced graph has no output")
    n_params = sum(int(p.numel()) for p in module.parameters())
    g = GraphModel(name=src, input_shape=shape, nodes=b.nodes, output=out_name, module=mod,
                   unsupported=b.unsupported, n_params=n_params)
    _fold_affine(g)
    g = _drop_identities(g)
    _input_space(g, module)
    return g


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


def _classify(b: _Builder, n: torch.fx.Node, args: tuple, kwargs: dict, val: Any, env: dict[str, Any]) -> None:
    op = _op_name(n.target)
    name = n.name
    shape = _shape(val) if isinstance(val, torch.Tensor) else ()
    tin = [a for a in n.all_input_nodes if a.name in b.taint]
    ins = [b.src(a.name) for a in tin]
    first = n.args[0] if n.args else None
    x_tainted = isinstance(first, torch.fx.Node) and first.name in b.taint
    tfirst = first if x_tainted else (tin[0] if tin else None)
    in_shape = _shape(env[tfirst.name]) if isinstance(tfirst, torch.fx.Node) else ()
    attrs: dict[str, Any] = {"in_shape": in_shape}

    def lin_weight_ok(*idx: int) -> bool:
        return x_tainted and all(not (isinstance(n.args[i], torch.fx.Node) and n.args[i].name in b.taint)
                                 for i in idx if i < len(n.args))

    if op in _SKIP:
        b.alias[name] = ins[0]
        return
    if op in _IDENTITY:
        b.alias[name] = ins[0]
        return
    if op in ("conv1d", "conv2d", "convolution") and lin_weight_ok(1, 2):
        w = args[1].detach().to(torch.float64)
        d = w.dim() - 2
        if op == "convolution":
            if args[6]:  # transposed
                b.bad(name, "conv_transpose", shape, ins, "transposed convolution is not supported yet", UNKNOWN)
                return
            stride, padding, dilation, groups = args[3], args[4], args[5], args[8]
        else:
            stride = args[3] if len(args) > 3 else 1
            padding = args[4] if len(args) > 4 else 0
            dilation = args[5] if len(args) > 5 else 1
            groups = args[6] if len(args) > 6 else 1
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            else:  # 'same' (stride 1): symmetric when (k-1)*d is even
                k = w.shape[2:]
                dl = _tuple(dilation, d)
                if any(((kk - 1) * dd) % 2 for kk, dd in zip(k, dl, strict=True)):
                    b.bad(name, op, shape, ins, "asymmetric 'same' padding is not supported", UNKNOWN)
                    return
                padding = [((kk - 1) * dd) // 2 for kk, dd in zip(k, dl, strict=True)]
        if d not in (1, 2):
            b.bad(name, op, shape, ins, f"{d}-D convolution is not supported", UNKNOWN)
            return
        attrs.update(weight=w, stride=_tuple(stride, d), padding=_tuple(padding, d), dilation=_tuple(dilation, d),
                     groups=int(groups))
        b.add(Node(name, "conv", ins, shape, attrs, op))
        return
    if op == "linear" and lin_weight_ok(1, 2):
        attrs["weight"] = args[1].detach().to(torch.float64)
        b.add(Node(name, "linear", ins, shape, attrs, op))
        return
    if op in ("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm") and lin_weight_ok(1, 2, 3, 4):
        if op == "batch_norm":
            w, _, mean, var, training, _, eps = args[1:8]
        elif op == "native_batch_norm":
            w, _, mean, var, training, _, eps = args[1:8]
        else:
            w, _, mean, var, _, eps = args[1:7]
            training = False
        if training:
            b.bad(name, op, shape, ins, "batch norm in training mode", UNKNOWN)
            return
        c = in_shape[0]
        scale = torch.ones(c, dtype=torch.float64) if w is None else w.detach().to(torch.float64)
        scale = scale / torch.sqrt(var.detach().to(torch.float64) + float(eps))
        attrs["scale"] = scale
        attrs["channel_dim"] = 0
        b.add(Node(name, "scale", ins, shape, attrs, op))
        return
    if op == "getitem":
        # item of a tuple-valued op (batch_norm variants, max_pool2d_with_indices, unbind): follow the parent
        b.alias[name] = ins[0]
        return
    if op in _ACT_TARGETS:
        aname = _ACT_TARGETS[op]
        try:
            if aname == "leaky_relu":
                a = acts.get_activation(f"leaky_relu:{args[1] if len(args) > 1 else 0.01}")
            elif aname == "elu":
                a = acts.get_activation(f"elu:{args[1] if len(args) > 1 else 1.0}")
            elif aname == "hardtanh":
                lo = args[1] if len(args) > 1 else -1.0
                hi = args[2] if len(args) > 2 else 1.0
                if lo >= hi:
                    raise ValueError("empty hardtanh range")
                a = acts.Activation(f"hardtanh({lo:g},{hi:g})", 0.0, 1.0)
            elif aname == "gelu":
                approx = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
                a = acts.get_activation("gelu_tanh" if approx == "tanh" else "gelu")
            elif aname == "softplus":
                beta = float(args[1]) if len(args) > 1 else 1.0
                a = acts.Activation("softplus", 0.0, 1.0) if beta > 0 else acts.get_activation("softplus")
            else:
                a = acts.get_activation(aname)
        except ValueError as e:
            b.bad(name, op, shape, ins, str(e), UNKNOWN)
            return
        attrs["act"] = a
        b.add(Node(name, "act", ins, shape, attrs, op))
        return
    if op in ("max_pool1d", "max_pool2d", "max_pool2d_with_indices", "max_pool1d_with_indices"):
        d = len(in_shape) - 1
        k = _tuple(args[1], d)
        s = _tuple(args[2] if len(args) > 2 and args[2] else k, d)
        p = _tuple(args[3] if len(args) > 3 else 0, d)
        dl = _tuple(args[4] if len(args) > 4 else 1, d)
        attrs.update(kernel=k, stride=s, padding=p, dilation=dl)
        b.add(Node(name, "maxpool", ins, shape, attrs, op))
        return
    if op in ("avg_pool1d", "avg_pool2d"):
        d = len(in_shape) - 1
        k = _tuple(args[1], d)
        s = _tuple(args[2] if len(args) > 2 and args[2] else k, d)
        p = _tuple(args[3] if len(args) > 3 else 0, d)
        ceil = bool(args[4]) if len(args) > 4 else False
        cip = bool(args[5]) if len(args) > 5 else True
        div = args[6] if len(args) > 6 else None
        attrs.update(kernel=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip, divisor=div)
        b.add(Node(name, "avgpool", ins, shape, attrs, op))
        return
    if op in ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "mean"):
        d = len(in_shape) - 1
        if op == "mean":
            dims = args[1] if len(args) > 1 else None
            dims = sorted({int(x) % (len(in_shape) + 1) for x in dims}) if dims is not None else None
            if len(in_shape) == 3 and dims == [2, 3]:
                attrs["dims"] = "spatial"
            elif len(in_shape) == 2 and dims == [1]:  # (B, T, C) mean over tokens
                attrs["dims"] = "tokens"
            elif len(in_shape) == 2 and dims == [2] or len(in_shape) == 3 and dims == [1]:
                attrs["dims"] = "channels"
            else:
                b.bad(name, "mean", shape, ins, f"mean over dims {dims}", UNKNOWN)
                return
            b.add(Node(name, "gap", ins, shape, attrs, op))
            return
        outsz = _tuple(args[1], d)
        if all(o == 1 for o in outsz):
            attrs["dims"] = "spatial"
            b.add(Node(name, "gap", ins, shape, attrs, op))
            return
        insz = in_shape[1:]
        if all(i % o == 0 for i, o in zip(insz, outsz, strict=True)):
            k = tuple(i // o for i, o in zip(insz, outsz, strict=True))
            attrs.update(kernel=k, stride=k, padding=(0,) * d, ceil_mode=False, count_include_pad=True, divisor=None)
            b.add(Node(name, "avgpool", ins, shape, attrs, op))
            return
        b.bad(name, op, shape, ins, "adaptive pooling with non-dividing output size", UNKNOWN)
        return
    if op in _RESHAPE:
        attrs["kind"] = op
        if op == "permute":
            attrs["perm"] = tuple(int(p) for p in args[1])
        elif op in ("transpose", "swapaxes"):
            attrs["perm"] = ("t", int(args[1]), int(args[2]))
        b.add(Node(name, "reshape", ins, shape, attrs, op))
        return
    if op in ("add", "add_", "sub", "sub_", "rsub"):
        other = args[1] if len(args) > 1 else kwargs.get("other")
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        both = len(tin) == 2 or (len(tin) == 1 and n.args[0] is n.args[1])
        if not both:  # x + constant: an affine shift, no effect on increments
            b.alias[name] = ins[0]
            return
        if n.args[0] is n.args[1]:
            c = 1.0 + (-alpha if op.startswith("sub") else alpha)
            attrs.update(scale=torch.tensor(float(c), dtype=torch.float64), channel_dim=None)
            b.add(Node(name, "scale", [ins[0]], shape, attrs, op))
            return
        if _shape(env[n.args[0].name]) != shape or _shape(env[n.args[1].name]) != shape:
            b.bad(name, op, shape, ins, "broadcasting addition of input-dependent tensors", UNKNOWN)
            return
        sign = -1.0 if op in ("sub", "sub_") else 1.0
        if op == "rsub":
            b.bad(name, op, shape, ins, "rsub of two input-dependent tensors", UNKNOWN)
            return
        attrs["coef"] = (1.0, sign * float(alpha))
        del other
        b.add(Node(name, "add", ins, shape, attrs, op))
        return
    if op in ("mul", "mul_", "div", "div_"):
        if len(tin) == 2 or (len(tin) == 1 and len(n.args) > 1 and n.args[0] is n.args[1]):
            why = ("multiplicative gating x*g(x) (e.g. squeeze-excite) is not globally Lipschitz"
                   if op.startswith("mul") else "division by an input-dependent tensor is not globally Lipschitz")
            b.bad(name, op, shape, ins, why, NOT_LIPSCHITZ)
            return
        if not x_tainted and op.startswith("div"):
            b.bad(name, op, shape, ins, "division by an input-dependent tensor is not globally Lipschitz",
                  NOT_LIPSCHITZ)
            return
        const = args[1] if x_tainted else args[0]
        c = torch.as_tensor(const, dtype=torch.float64).detach()
        if op.startswith("div"):
            c = 1.0 / c
        full = torch.broadcast_shapes(tuple(c.shape), (1, *in_shape))
        if tuple(full[1:]) != tuple(in_shape):
            b.bad(name, op, shape, ins, "broadcasting product changes the shape", UNKNOWN)
            return
        cc = c.reshape(c.shape[1:] if c.dim() == len(in_shape) + 1 else c.shape)
        attrs.update(_scale_attrs(cc, in_shape))
        b.add(Node(name, "scale", ins, shape, attrs, op))
        return
    if op == "addcmul":  # input + value * t1 * t2 (timm's Affine: beta + alpha * x)
        value = float(kwargs.get("value", args[3] if len(args) > 3 else 1.0))
        tt = [isinstance(a, torch.fx.Node) and a.name in b.taint for a in n.args[:3]]
        if tt[1] and tt[2]:
            b.bad(name, op, shape, ins, "multiplicative gating x*g(x) is not globally Lipschitz", NOT_LIPSCHITZ)
            return
        if not tt[1] and not tt[2]:  # tainted input + constant product: an affine shift
            b.alias[name] = ins[0]
            return
        if tt[0]:
            b.bad(name, op, shape, ins, "addcmul adding two input-dependent terms", UNKNOWN)
            return
        xi = 1 if tt[1] else 2
        c = torch.as_tensor(args[3 - xi], dtype=torch.float64).detach() * value
        in_shape = _shape(env[n.args[xi].name])
        attrs["in_shape"] = in_shape
        attrs.update(_scale_attrs(c.reshape(c.shape[1:]) if c.dim() == len(in_shape) + 1 else c, in_shape))
        b.add(Node(name, "scale", ins, shape, attrs, op))
        return
    if op == "cat":
        dim = int(args[1]) if len(args) > 1 else 0
        parts = []
        for a in n.args[0]:
            v = env[a.name]
            parts.append((b.src(a.name) if a.name in b.taint else None, _shape(v)))
        attrs.update(dim=dim, parts=parts)
        b.add(Node(name, "cat", [p for p, _ in parts if p is not None], shape, attrs, op))
        return
    if op in ("slice", "select", "narrow", "index_select", "unbind", "split", "chunk", "split_with_sizes"):
        if op in ("unbind", "split", "chunk", "split_with_sizes"):
            b.bad(name, op, shape, ins, f"{op} (multi-output) is only supported inside attention", UNKNOWN)
            return
        attrs["kind"] = op
        b.add(Node(name, "slice", ins, shape, attrs, op))
        return
    if op in ("layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "rms_norm"):
        if op in ("layer_norm", "native_layer_norm"):
            w = args[2] if len(args) > 2 else None
            eps = args[4] if len(args) > 4 else 1e-5
        elif op == "rms_norm":
            w = args[2] if len(args) > 2 else None
            eps = args[3] if len(args) > 3 and args[3] is not None else torch.finfo(torch.float32).eps
        else:
            w = args[2] if len(args) > 2 else None
            eps = args[4] if op == "group_norm" and len(args) > 4 else (args[7] if len(args) > 7 else 1e-5)
        g = 1.0 if w is None else float(torch.as_tensor(w).abs().max())
        attrs.update(lip=g / math.sqrt(float(eps)), eps=float(eps), gamma_max=g)
        b.add(Node(name, "norm", ins, shape, attrs, op))
        return
    if op in ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math", "bmm", "matmul",
              "baddbmm", "einsum") and len(tin) >= 2:
        b.bad(name, op, shape, ins, "dot-product attention is not globally Lipschitz (Kim et al. 2021)", NOT_LIPSCHITZ)
        return
    if op in ("softmax", "_softmax", "log_softmax", "_log_softmax"):
        b.bad(name, op, shape, ins, "softmax over input-dependent scores (attention) is not supported", UNKNOWN)
        return
    if op in ("pad", "constant_pad_nd") and (len(args) < 3 or not args[2]):
        attrs["kind"] = "pad"
        b.add(Node(name, "slice", ins, shape, attrs, op))  # zero padding: an isometric embedding, norm 1
        return
    b.bad(name, op, shape, ins, "no Lipschitz rule for this operator", UNKNOWN)


def _scale_attrs(c: torch.Tensor, in_shape: tuple[int, ...]) -> dict[str, Any]:
    """Classify a constant multiplier: a scalar, per-channel (dim 0 of CHW, or the last dim of tokens), or general."""
    if c.numel() == 1:
        return {"scale": c.reshape(()), "channel_dim": None}
    nz = [i for i, s in enumerate(c.shape) if s != 1]
    off = len(in_shape) - c.dim()  # right-aligned broadcasting
    if len(nz) == 1:
        dim = nz[0] + off
        return {"scale": c.reshape(-1), "channel_dim": dim}
    return {"scale": c, "channel_dim": "full"}


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
