"""Turn a torch module or a weight file into the `MLP` the bound family works on.

Why one module for every input: whatever the source (an nn.Module, .npz, ECLipsE's .mat, .safetensors,
.pt state dicts, plain arrays), it ends as the same float64 weight list, so every variant sees identical
numbers, and every failure becomes one `InputError` line that names the source and the problem.

Exactness rules, so a bound on the MLP is a bound on the input network:
- BatchNorm1d (eval mode, running statistics) is a diagonal affine map: folded into the neighbouring
  Linear exactly; consecutive affine maps with no activation between them are multiplied out.
- Dropout / Identity / Flatten are identities at inference (Flatten is an isometric reshape).
- An activation before the first or after the last Linear gets an identity Linear beside it; two
  activations in a row become one whose slope interval is the product interval (exact hull).
- A state dict records no activations and no order: it is read as
  Linear [→ BatchNorm1d] → act → … → Linear, layers in natural order of their key prefixes.
"""

from __future__ import annotations

import math
import operator
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..activations import SUPPORTED, Activation, aten_kind, from_function, from_module, from_slope, get_activation
from ..errors import InputError
from .network import MLP

FORMATS = (".npz", ".mat", ".safetensors", ".pt", ".pth", ".bin", ".npy")
_MISSING_ACT = ("the file does not record the activation: pass --activation NAME (e.g. relu, tanh, "
                "leaky_relu:0.1) or --slope A,B")


class NotAnMLP(InputError):
    """The module is not a Linear/activation chain (a conv, a residual, attention...): the graph engine's job."""


class _FileProblem(Exception):
    """A reader understood the file and knows what is wrong with it (not a corrupt-file guess)."""


# ---------------------------------------------------------------------------------------------------------
# The chain of operations both the module path and the state-dict path reduce to
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Lin:
    W: np.ndarray
    b: np.ndarray | None
    where: str


@dataclass
class _Diag:  # y = s * x + t (BatchNorm1d in eval mode)
    s: np.ndarray
    t: np.ndarray
    where: str
    note: str | None = None  # an assumption the bound rests on (a fact the file does not store)


@dataclass
class _Act:
    act: Activation | None  # None: the activation comes later (state dicts)
    where: str
    pre: Activation | None = None  # known maps composed before / after an activation that comes later
    post: Activation | None = None


_Op = _Lin | _Diag | _Act


def _np64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    return np.asarray(x, dtype=np.float64)


def _merge_affine(src: str, group: list[_Lin | _Diag]) -> _Lin:
    """Compose consecutive affine maps (applied in list order) into one Linear, exactly."""
    W: np.ndarray | None = None
    b: np.ndarray | None = None
    pre_s: np.ndarray | None = None  # diagonal maps met before the first Linear of the group
    pre_t: np.ndarray | None = None
    prev = ""
    for op in group:
        if isinstance(op, _Lin):
            if W is None:
                W, b = op.W, op.b
                if pre_s is not None:
                    if W.shape[1] != pre_s.shape[0]:
                        raise InputError(src, f"shape mismatch: '{prev}' has {pre_s.shape[0]} features but "
                                              f"'{op.where}' expects {W.shape[1]}")
                    b = W @ pre_t + (0.0 if b is None else b)
                    W = W * pre_s[None, :]
            else:
                if op.W.shape[1] != W.shape[0]:
                    raise InputError(src, f"shape mismatch: '{prev}' outputs {W.shape[0]} features but "
                                          f"'{op.where}' expects {op.W.shape[1]}")
                b = None if b is None else op.W @ b
                if op.b is not None:
                    b = op.b if b is None else b + op.b
                W = op.W @ W
        else:
            n = W.shape[0] if W is not None else (pre_s.shape[0] if pre_s is not None else op.s.shape[0])
            if op.s.shape[0] != n:
                raise InputError(src, f"shape mismatch: '{prev}' outputs {n} features but "
                                      f"'{op.where}' normalises {op.s.shape[0]}")
            if W is None:
                pre_s, pre_t = (op.s, op.t) if pre_s is None else (op.s * pre_s, op.s * pre_t + op.t)
            else:
                W = op.s[:, None] * W
                b = op.t if b is None else op.s * b + op.t
        prev = op.where
    if W is None:  # a BatchNorm between two activations: a diagonal hidden layer
        assert pre_s is not None and pre_t is not None
        W, b = np.diag(pre_s), pre_t
    return _Lin(W, b, group[0].where if len(group) == 1 else f"{group[0].where}..{group[-1].where}")


def _compose(first: Activation | None, second: Activation | None) -> Activation | None:
    """phi2(phi1(x)): every difference quotient is a product q2*q1, so the product interval holds it."""
    if first is None or second is None:
        return None
    corners = [first.alpha * second.alpha, first.alpha * second.beta, first.beta * second.alpha,
               first.beta * second.beta]
    f1, f2 = first.fn, second.fn
    fn = None if f1 is None or f2 is None else (lambda x, f1=f1, f2=f2: f2(f1(x)))
    return Activation(f"{first.name}>{second.name}", min(corners), max(corners), fn)


def _merge_acts(a: _Act, b: _Act) -> _Act:
    """Two elementwise maps in a row are one; a known one beside a slot still to be named is kept beside it."""
    where = f"{a.where}+{b.where}"
    if a.act is not None and b.act is not None:
        return _Act(_compose(a.act, b.act), where)
    if a.act is None and b.act is None:
        raise InputError(where, "two activations in a row whose kinds are both unknown")
    if b.act is None:
        return _Act(None, where, pre=a.act if a.pre is None else _compose(a.pre, a.act), post=b.post)
    post = b.act if a.post is None else _compose(a.post, b.act)
    return _Act(None, where, pre=a.pre, post=post)


def _assemble(src: str, ops: list[_Op]) -> tuple[list[_Lin], list[_Act]]:
    """Reduce a chain to the MLP shape Linear (act Linear)*; see the module docstring for the rules."""
    items: list[_Lin | _Act] = []
    group: list[_Lin | _Diag] = []
    for op in ops:
        if isinstance(op, _Act):
            if group:
                items.append(_merge_affine(src, group))
                group = []
            if items and isinstance(items[-1], _Act):
                prev = items.pop()
                items.append(_merge_acts(prev, op))
            else:
                items.append(op)
        else:
            group.append(op)
    if group:
        items.append(_merge_affine(src, group))
    lins = [it for it in items if isinstance(it, _Lin)]
    if not lins:
        raise NotAnMLP(src, "no Linear layer found")
    if isinstance(items[0], _Act):  # activation on the raw input: identity Linear in front (exact)
        items.insert(0, _Lin(np.eye(lins[0].W.shape[1]), None, "input"))
    if isinstance(items[-1], _Act):  # activation after the last Linear: identity Linear behind (exact)
        items.append(_Lin(np.eye(lins[-1].W.shape[0]), None, "output"))
    lins = [it for it in items if isinstance(it, _Lin)]
    acts = [it for it in items if isinstance(it, _Act)]
    for a, b in zip(lins, lins[1:], strict=False):
        if a.W.shape[0] != b.W.shape[1]:
            raise InputError(src, f"shape mismatch: '{a.where}' outputs {a.W.shape[0]} features but "
                                  f"'{b.where}' expects {b.W.shape[1]}")
    return lins, acts


def _build(src: str, name: str, lins: list[_Lin], acts: list[Activation]) -> MLP:
    try:
        return MLP([lin.W for lin in lins], acts, [lin.b for lin in lins], name=name)
    except InputError as e:  # name the source the user gave, not only the model name
        raise InputError(src, e.problem) from None


# ---------------------------------------------------------------------------------------------------------
# torch modules
# ---------------------------------------------------------------------------------------------------------
_SKIP_FUNCS = {F.dropout, F.alpha_dropout, F.feature_alpha_dropout, F.dropout1d, torch.flatten}
_SKIP_METHODS = {"flatten", "contiguous", "float", "double"}


def _is_identity(m: nn.Module) -> bool:
    return isinstance(m, nn.Identity | nn.Flatten | nn.modules.dropout._DropoutNd)


def _module_ops(src: str, m: nn.Module, where: str) -> list[_Op]:
    """The chain operation(s) of one leaf module, or NotAnMLP naming it."""
    if isinstance(m, nn.Linear):
        return [_Lin(_np64(m.weight), None if m.bias is None else _np64(m.bias), where)]
    if _is_identity(m):
        return []
    if isinstance(m, nn.BatchNorm1d):
        if m.running_mean is None or m.running_var is None:
            raise InputError(src, f"BatchNorm1d at '{where}' keeps no running statistics: it normalises with "
                                  "batch statistics, which has no fixed Lipschitz constant")
        s = 1.0 / np.sqrt(_np64(m.running_var) + m.eps)
        if m.weight is not None:
            s = s * _np64(m.weight)
        t = -_np64(m.running_mean) * s + (0.0 if m.bias is None else _np64(m.bias))
        return [_Diag(s, t, where)]
    act = _table_activation(src, m, where)
    if act is not None:
        return [_Act(act, where)]
    raise NotAnMLP(src, f"unsupported layer {type(m).__name__} at '{where}'")


def _table_activation(src: str, m: nn.Module, where: str) -> Activation | None:
    """The activation table's reading of module `m` (None: not an activation); a parameter it cannot bound is
    NotAnMLP naming the layer (the graph engine then refuses it with the same reason)."""
    try:
        return from_module(m)
    except ValueError as e:
        raise NotAnMLP(src, f"{type(m).__name__} at '{where}': {e}") from None


def _plain_sequential(m: nn.Module) -> bool:
    """A Sequential whose forward is the stock one (a subclass may compute something else)."""
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _sequential_ops(src: str, seq: nn.Sequential, prefix: str = "") -> list[_Op] | None:
    """Walk (nested) Sequentials directly; None when a child is a custom container (then fx traces it)."""
    ops: list[_Op] = []
    for child_name, child in seq.named_children():
        where = f"{prefix}{child_name}"
        if _plain_sequential(child):
            sub = _sequential_ops(src, child, where + ".")
            if sub is None:
                return None
            ops += sub
        elif not type(child).__module__.startswith("torch.nn"):
            return None  # a user-defined block: let torch.fx look inside it
        else:
            ops += _module_ops(src, child, where)
    return ops


def _precheck_leaves(src: str, module: nn.Module) -> None:
    """Name the first torch.nn layer no MLP can hold (a Conv2d in a ResNet) before paying for an fx trace."""
    for where, m in module.named_modules():
        if next(m.children(), None) is not None or not type(m).__module__.startswith("torch.nn"):
            continue
        if isinstance(m, nn.Linear | nn.BatchNorm1d) or _is_identity(m) or _table_activation(src, m, where):
            continue
        raise NotAnMLP(src, f"unsupported layer {type(m).__name__} at '{where}'")


def _fn_name(target: Any) -> str:
    return getattr(target, "__name__", None) or str(target)


def _function_activation(src: str, target: Any, node: Any) -> Activation | None:
    """The activation table's reading of a functional call (F.leaky_relu(x, 0.2), torch.tanh(x), ...)."""
    try:
        return from_function(target, tuple(node.args[1:]), dict(node.kwargs))
    except (TypeError, ValueError) as e:
        raise NotAnMLP(src, f"cannot read {_fn_name(target)} at '{node.name}': {e}") from None


def _fx_ops(src: str, module: nn.Module) -> list[_Op]:
    """Trace with torch.fx and accept only a single chain input → Linear/activation/... → output."""
    import torch.fx as fx

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = fx.symbolic_trace(module)
    except Exception as e:  # control flow, untraceable code: the graph engine may still cope
        msg = str(e).splitlines()[0][:160] if str(e) else ""
        raise NotAnMLP(src, f"torch.fx cannot trace {type(module).__name__} as a Linear/activation chain "
                            f"({type(e).__name__}: {msg})") from None

    ops: list[_Op] = []
    cur: fx.Node | None = None
    shape_nodes: set[fx.Node] = set()
    attr_nodes: set[fx.Node] = set()

    def data_inputs(node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
        return [n for n in found if n not in shape_nodes and n not in attr_nodes]

    def attr(target: str) -> Any:
        obj: Any = gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if cur is None:
                cur = node
            elif node.users:
                raise NotAnMLP(src, f"forward takes a second input '{node.name}': not a single-input MLP")
            continue
        if node.op == "get_attr":
            attr_nodes.add(node)
            continue
        if node.op == "output":
            if node.args[0] is not cur:
                raise NotAnMLP(src, "the output is not the end of a single Linear/activation chain")
            break
        ins = data_inputs(node)
        target = node.target
        if node.op == "call_method" and target in ("size", "dim") or (
                node.op == "call_function" and target is getattr and node.args[1] == "shape") or (
                node.op == "call_function" and target is operator.getitem and node.args[0] in shape_nodes):
            shape_nodes.add(node)
            continue
        what = target if node.op == "call_module" else _fn_name(target)
        if ins != [cur]:
            if len(ins) > 1:
                raise NotAnMLP(src, f"operation {what} at '{node.name}' combines several tensors (a residual or "
                                    "a branch): not a plain Linear/activation chain")
            raise NotAnMLP(src, f"unsupported operation {what} at '{node.name}': not a plain Linear/activation chain")
        if node.op == "call_module":
            ops += _module_ops(src, gm.get_submodule(target), target)
        elif node.op == "call_function" and (kind := _function_activation(src, target, node)) is not None:
            ops.append(_Act(kind, node.name))
        elif node.op == "call_function" and target in _SKIP_FUNCS:
            pass
        elif node.op == "call_function" and target is F.linear:
            args = list(node.args[1:])
            w = args[0] if args else node.kwargs.get("weight")
            b = args[1] if len(args) > 1 else node.kwargs.get("bias")
            if not (isinstance(w, fx.Node) and w.op == "get_attr") or (b is not None and not (
                    isinstance(b, fx.Node) and b.op == "get_attr")):
                raise NotAnMLP(src, f"F.linear at '{node.name}' with computed weights is not supported")
            ops.append(_Lin(_np64(attr(w.target)), None if b is None else _np64(attr(b.target)), node.name))
        elif node.op == "call_method" and (kind := aten_kind(target)) is not None and not kind.params \
                and len(node.args) == 1 and not node.kwargs:  # x.relu(), x.tanh(), x.sigmoid_()
            ops.append(_Act(kind.make(), node.name))
        elif node.op == "call_method" and target in _SKIP_METHODS:
            pass
        elif node.op == "call_method" and target in ("view", "reshape"):
            shape = node.args[1:]
            if len(shape) == 1 and isinstance(shape[0], tuple | list):
                shape = tuple(shape[0])
            if len(shape) != 2:
                raise NotAnMLP(src, f"{target} at '{node.name}' to a {len(shape)}-D shape: not a flat MLP")
        else:
            raise NotAnMLP(src, f"unsupported operation {what} at '{node.name}': not a plain Linear/activation chain")
        cur = node
    return ops


def _refuse_hooks(src: str, module: nn.Module) -> None:
    """Hooks change what a module computes without showing in its layer list: the graph engine traces them."""
    from torch.nn.modules import module as torch_module

    if any(getattr(torch_module, g, None) for g in ("_global_forward_hooks", "_global_forward_pre_hooks")):
        raise NotAnMLP(src, "global forward hooks are registered: the module is traced as a graph instead")
    for where, m in module.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            raise NotAnMLP(src, f"module '{where or type(m).__name__}' has forward hooks: traced as a graph instead")


def _check_reproduces(src: str, module: nn.Module, mlp: MLP, input_shape: Sequence[int] | None) -> None:
    """What is bounded must be what the module computes: the chain read from it must reproduce its eval-mode
    output on random inputs (float64). Otherwise it is not a plain chain (NotAnMLP: the graph engine traces it)."""
    import copy

    n0 = mlp.widths[0]
    shape = tuple(int(d) for d in input_shape) if input_shape else (n0,)
    if math.prod(shape) != n0:
        return  # the caller reports the shape mismatch
    try:
        m = copy.deepcopy(module).eval().to(torch.float64)
        x = torch.randn(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = m(x).reshape(4, -1)
            got = mlp.torch_callable()(x.reshape(4, -1))
    except Exception:  # noqa: BLE001 - a module that cannot run on this shape: the static reading stands
        return
    err = float((want - got).norm() / max(float(want.norm()), 1e-300))
    if want.shape != got.shape or not err <= 1e-6:
        raise NotAnMLP(src, f"the Linear/activation chain read from the module does not reproduce its output "
                            f"(relative error {err:.2g}): traced as a graph instead")


def mlp_from_module(module: nn.Module, name: str | None = None,
                    input_shape: Sequence[int] | None = None) -> MLP:
    """The MLP computing `module`'s eval-mode function (BatchNorm folded, Dropout ignored), exactly.

    Raises NotAnMLP (naming the layer) for anything that is not a Linear/activation chain, so the caller can
    hand the module to the graph engine instead.
    """
    src = name or type(module).__name__
    _refuse_hooks(src, module)
    ops = _sequential_ops(src, module) if _plain_sequential(module) else None
    if ops is None:
        _precheck_leaves(src, module)
        ops = _fx_ops(src, module)
    lins, acts = _assemble(src, ops)
    mlp = _build(src, src, lins, [a.act for a in acts])  # type: ignore[misc]
    _check_reproduces(src, module, mlp, input_shape)
    if input_shape is not None:
        n0 = mlp.widths[0]
        shape = tuple(int(d) for d in input_shape)
        if math.prod(shape) != n0 and (not shape or shape[-1] != n0):
            raise InputError(src, f"input shape {shape} does not fit the first Linear layer's {n0} input features")
    return mlp


# ---------------------------------------------------------------------------------------------------------
# Weight files and arrays
# ---------------------------------------------------------------------------------------------------------
def _natural_key(s: str) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s) if t)


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    msg = msg if len(msg) <= limit else msg[: limit - 3] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _array(src: str, key: str, x: Any) -> np.ndarray:
    """A float64 copy of one stored array, or InputError naming its key."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise InputError(src, f"array '{key}' is complex ({x.dtype}); weights must be real")
        return _np64(x)
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise InputError(src, f"array '{key}' is not numeric (dtype {a.dtype})")
    return a.astype(np.float64)


def _is_arraylike(x: Any) -> bool:
    return isinstance(x, torch.Tensor | np.ndarray)


def _from_sequence(src: str, items: Sequence[tuple[str, Any]]) -> list[_Op]:
    """A list of arrays: 2-D ones are weights in order, a 1-D one right after a weight is its bias."""
    ops: list[_Op] = []
    has_bias = False
    for key, x in items:
        a = _array(src, key, x)
        if a.ndim == 2:
            if 0 in a.shape:
                raise InputError(src, f"weight '{key}' is empty (shape {a.shape})")
            if ops:
                ops.append(_Act(None, key))
            ops.append(_Lin(a, None, key))
            has_bias = False
        elif a.ndim == 1 and ops and not has_bias and isinstance(ops[-1], _Lin) and a.shape[0] == ops[-1].W.shape[0]:
            ops[-1].b = a
            has_bias = True
        elif a.ndim > 2:
            raise NotAnMLP(src, f"array '{key}' is {a.ndim}-D (shape {tuple(a.shape)}); weight files must hold MLP "
                                "weight matrices (out x in)")
        else:
            raise InputError(src, f"array '{key}' (shape {tuple(a.shape)}) is neither a weight matrix nor the bias "
                                  "of the weight before it")
    return ops


def _cells(x: Any) -> list[Any]:
    """Elements of a MATLAB cell array / numpy object array / stacked 3-D array / list, in order."""
    if isinstance(x, list | tuple):
        return list(x)
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype == object:
        return [e for e in a.reshape(-1, order="F")]  # MATLAB cells are column-major; (1, L) either way
    if a.ndim == 3:
        return list(a)
    return [a]


def _from_weight_lists(src: str, weights: Any, biases: Any | None) -> list[_Op]:
    ws = _cells(weights)
    bs = _cells(biases) if biases is not None else [None] * len(ws)
    if len(bs) != len(ws):
        raise InputError(src, f"{len(ws)} weight matrices but {len(bs)} biases")
    ops: list[_Op] = []
    for k, (w, b) in enumerate(zip(ws, bs, strict=True), start=1):
        W = _array(src, f"weights[{k}]", w)
        if W.ndim != 2 or 0 in W.shape:
            raise InputError(src, f"weights[{k}] must be a non-empty 2-D matrix (out x in), got shape {W.shape}")
        if ops:
            ops.append(_Act(None, f"weights[{k}]"))
        ops.append(_Lin(W, None if b is None else _array(src, f"biases[{k}]", b).reshape(-1), f"weights[{k}]"))
    return ops


def _from_state_dict(src: str, sd: Mapping[str, Any], ordered: bool = True, bn_eps: float | None = None
                     ) -> list[_Op]:
    """Linear (2-D '*.weight') and BatchNorm1d ('*.running_mean'/'*.running_var') groups, natural order."""
    groups: dict[str, dict[str, Any]] = {}
    for key, val in sd.items():
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = val
    prefixes = sorted(groups, key=_natural_key) if ordered else list(groups)
    ops: list[_Op] = []
    seen_linear = False
    for prefix in prefixes:
        g = groups[prefix]

        def full(leaf: str, p: str = prefix) -> str:
            return f"{p}.{leaf}" if p else leaf

        if "running_mean" in g and "running_var" in g:
            extra = set(g) - {"running_mean", "running_var", "weight", "bias", "num_batches_tracked"}
            if extra:
                raise InputError(src, f"unexpected tensor '{full(sorted(extra)[0])}' in BatchNorm1d '{prefix}'")
            var = _array(src, full("running_var"), g["running_var"]).reshape(-1)
            eps = 0.0 if bn_eps is None else float(bn_eps)
            if not (math.isfinite(eps) and eps >= 0):
                raise InputError(src, f"bn_eps must be a finite number >= 0, got {bn_eps!r}")
            if bool((var + eps <= 0).any()):
                raise InputError(src, f"BatchNorm1d '{prefix}' has running_var <= 0 and eps {eps:g}: no finite "
                                      "Lipschitz constant (pass the model's eps with bn_eps=...)")
            s = 1.0 / np.sqrt(var + eps)
            if "weight" in g:
                s = s * _array(src, full("weight"), g["weight"]).reshape(-1)
            t = -_array(src, full("running_mean"), g["running_mean"]).reshape(-1) * s
            if "bias" in g:
                t = t + _array(src, full("bias"), g["bias"]).reshape(-1)
            if bn_eps is None:
                # eps unknown: the model's scales are s0*e_i with e_i = sqrt(var/(var+eps)) in (0, 1]. Bounding
                # the eps = 0 scales followed by an unknown fixed gain in [0, 1] per feature (a [0, 1] sector)
                # holds for every eps >= 0 the model could have used.
                note = (f"BatchNorm1d '{prefix}': the file does not store eps; bounded for every eps >= 0 (eps = 0 "
                        "scales times an unknown gain in [0, 1]); pass bn_eps to bound the exact model")
                ops.append(_Diag(s, t, prefix, note))
                ops.append(_Act(Activation("bn_eps_gain[0,1]", 0.0, 1.0, lambda x: x), prefix))
            else:
                ops.append(_Diag(s, t, prefix, f"BatchNorm1d '{prefix}': eps = {eps:g} (given)"))
            continue
        if "weight" not in g:
            leaf = sorted(g)[0]
            raise InputError(src, f"unexpected tensor '{full(leaf)}': a state dict must hold only Linear and "
                                  "BatchNorm1d parameters")
        W = _array(src, full("weight"), g["weight"])
        if W.ndim > 2:
            raise NotAnMLP(src, f"'{full('weight')}' is a {W.ndim}-D tensor {tuple(W.shape)} (a convolution?): "
                                "state-dict files must hold MLPs; pass the nn.Module to lipcore.analyze, which "
                                "hands it to the graph engine")
        if W.ndim < 2:
            raise InputError(src, f"'{full('weight')}' is {W.ndim}-D with no running statistics: not a Linear or "
                                  "BatchNorm1d layer (LayerNorm / PReLU are not supported in weight files)")
        extra = set(g) - {"weight", "bias"}
        if extra:
            raise InputError(src, f"unexpected tensor '{full(sorted(extra)[0])}' beside Linear '{prefix}'")
        b = _array(src, full("bias"), g["bias"]).reshape(-1) if "bias" in g else None
        if seen_linear:
            ops.append(_Act(None, prefix))
        ops.append(_Lin(W, b, full("weight")))
        seen_linear = True
    return ops


_WB = re.compile(r"^([WwBb])_?(\d+)$")


def _state_dict_ops(src: str, sd: Mapping[str, Any], ordered_source: bool, bn_eps: float | None = None
                    ) -> list[_Op]:
    """Natural key order, or the file's own order when only that one chains; both chaining differently is an error."""
    natural = _from_state_dict(src, sd, ordered=True, bn_eps=bn_eps)
    natural_error: InputError | None = None
    try:
        _assemble(src, natural)
    except InputError as e:
        natural_error = e
    stored = _from_state_dict(src, sd, ordered=False, bn_eps=bn_eps) if ordered_source else natural
    if [op.where for op in stored] == [op.where for op in natural]:
        if natural_error is not None:
            raise natural_error
        return natural
    try:
        _assemble(src, stored)
        stored_ok = True
    except InputError:
        stored_ok = False
    if natural_error is None and stored_ok:
        def names(ops: list[_Op]) -> str:
            w = [op.where.removesuffix(".weight") for op in ops if not isinstance(op, _Act)]
            return ", ".join(w[:5]) + (", ..." if len(w) > 5 else "")

        raise InputError(src, f"ambiguous layer order: the names sort as [{names(natural)}] but the file stores "
                              f"[{names(stored)}] and both fit; name the layers so they sort in forward order, or "
                              "pass the nn.Module")
    if natural_error is None:
        return natural
    if stored_ok:
        return stored
    raise natural_error


def _from_arrays_dict(src: str, d: Mapping[str, Any], ordered_source: bool = True, bn_eps: float | None = None
                      ) -> list[_Op]:
    """Dispatch on the key scheme: W1..WL/b1..bL, 'weights'(+'biases'), arr_0.., or a state dict."""
    keys = list(d)
    if not keys:
        raise InputError(src, "no arrays in the file")
    if any(k.endswith(("weight", "running_mean")) and (k == "weight" or "." in k) for k in keys):
        return _state_dict_ops(src, {k: v for k, v in d.items() if _is_arraylike(v)}, ordered_source, bn_eps)
    wb = {k: _WB.match(k) for k in keys}
    if any(m and m.group(1) in "Ww" for m in wb.values()):
        Ws = {int(m.group(2)): d[k] for k, m in wb.items() if m and m.group(1) in "Ww"}
        Bs = {int(m.group(2)): d[k] for k, m in wb.items() if m and m.group(1) in "Bb"}
        idx = sorted(Ws)
        expected = list(range(idx[0], idx[0] + len(idx)))
        if idx[0] not in (0, 1) or idx != expected:
            missing = sorted(set(range(1 if idx[0] else 0, idx[-1] + 1)) - set(idx))
            raise InputError(src, f"weight arrays must be numbered W1..WL without gaps; missing W{missing[0]}")
        stray = sorted(set(Bs) - set(Ws))
        if stray:
            raise InputError(src, f"bias b{stray[0]} has no weight W{stray[0]}")
        ops: list[_Op] = []
        for i in idx:
            W = _array(src, f"W{i}", Ws[i])
            b = _array(src, f"b{i}", Bs[i]).reshape(-1) if i in Bs else None
            if ops:
                ops.append(_Act(None, f"W{i}"))
            ops.append(_Lin(W, b, f"W{i}"))
        return ops
    if "weights" in d:
        return _from_weight_lists(src, d["weights"], d.get("biases"))
    arr = sorted((k for k in keys if re.fullmatch(r"arr_\d+", k)), key=_natural_key)
    if arr:
        return _from_sequence(src, [(k, d[k]) for k in arr])
    shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    raise InputError(src, f"no weight matrices found (keys: {shown}); expected W1..WL (+ b1..bL), a 'weights' "
                          "array, or a state dict of Linear layers")


def _meta_activation(x: Any) -> str | None:
    """An activation name stored in a file (npz/mat string array, safetensors metadata, checkpoint key)."""
    if x is None:
        return None
    if isinstance(x, bytes):
        return x.decode()
    if isinstance(x, str):
        return x
    a = np.asarray(x)
    if a.dtype.kind in "US" and a.size == 1:
        v = a.reshape(-1)[0]
        return v.decode() if isinstance(v, bytes) else str(v)
    return None


# -- restricted unpickling of numpy object arrays (never run arbitrary pickled code) -----------------------
_SAFE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed)")


def _read_object_npy(fp: Any) -> np.ndarray:
    version = np.lib.format.read_magic(fp)
    shape, fortran, dtype = (np.lib.format.read_array_header_1_0(fp) if version == (1, 0)
                             else np.lib.format.read_array_header_2_0(fp))
    arr = _ArrayUnpickler(fp).load()
    if not isinstance(arr, np.ndarray):
        raise ValueError("object array payload is not an array")
    return arr


def _read_npz(path: Path) -> tuple[dict[str, Any], str | None]:
    with open(path, "rb") as fh:
        is_npy = fh.read(6) == b"\x93NUMPY"
    if not is_npy and not zipfile.is_zipfile(path):
        raise _FileProblem("not a zip archive (corrupt or truncated?)")
    z = np.load(path, allow_pickle=False)
    if isinstance(z, np.ndarray):  # a .npy saved under a .npz name
        return {"weights": z}, None
    with z:
        out: dict[str, Any] = {}
        for key in z.files:
            try:
                out[key] = z[key]
            except ValueError as e:
                if "allow_pickle" not in str(e):
                    raise
                with z.zip.open(f"{key}.npy") as fp:
                    out[key] = _read_object_npy(fp)
    act = _meta_activation(out.pop("activation", None))
    return out, act


def _read_npy(path: Path) -> tuple[dict[str, Any], str | None]:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise
        with open(path, "rb") as fp:
            arr = _read_object_npy(fp)
    return {"weights": arr}, None


def _read_mat(path: Path) -> tuple[dict[str, Any], str | None]:
    from scipy.io import loadmat

    try:
        d = loadmat(path)
    except NotImplementedError as e:
        raise _FileProblem("MATLAB v7.3 (HDF5) .mat files are not supported; re-save with save(..., '-v7')") from e
    d = {k: v for k, v in d.items() if not k.startswith("__")}
    act = _meta_activation(d.pop("activation", None))
    w = d.get("weights")
    if isinstance(w, np.ndarray) and w.dtype.names:  # a struct of named matrices: a state dict
        s = w.reshape(-1)[0]
        return {name: s[name] for name in w.dtype.names}, act
    return d, act


def _read_safetensors(path: Path) -> tuple[dict[str, Any], str | None]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "bn_eps" in meta:
        tensors["bn_eps"] = meta["bn_eps"]
    return tensors, meta.get("activation")


_CKPT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")


def _read_torch(path: Path) -> tuple[dict[str, Any], str | None]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if not zipfile.is_zipfile(path):  # torch.save writes zip archives: this is noise or a truncated file
            raise _FileProblem("not a torch.save archive (corrupt or truncated?)") from None
        if isinstance(e, pickle.UnpicklingError) and "weights only load failed" in str(e).lower():
            raise _FileProblem("it holds pickled Python objects (e.g. a whole nn.Module) that torch.load("
                               "weights_only=True) refuses and lipzoo does not unpickle; save model.state_dict() "
                               "instead, or pass the module to lipcore.analyze") from None
        raise
    act = None
    eps = None  # BatchNorm eps, when the checkpoint records it (key 'bn_eps')
    if isinstance(obj, Mapping):
        act = _meta_activation(obj.get("activation"))
        eps = obj.get("bn_eps")
        if not any(_is_arraylike(v) for v in obj.values()):
            inner = next((obj[k] for k in _CKPT_KEYS if isinstance(obj.get(k), Mapping | list | tuple)), None)
            if inner is None:
                raise _FileProblem(f"no tensors found (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
            obj = inner
    if isinstance(obj, list | tuple):
        return {f"arr_{i}": v for i, v in enumerate(obj)}, act
    if isinstance(obj, torch.Tensor):
        return {"arr_0": obj}, act
    if isinstance(obj, Mapping):
        out = {str(k): v for k, v in obj.items() if _is_arraylike(v) and k != "bn_eps"}
        eps = obj.get("bn_eps", eps)
        return ({**out, "bn_eps": eps} if eps is not None else out), act
    raise _FileProblem(f"unexpected top-level object {type(obj).__name__}; expected a state dict")


_READERS: dict[str, tuple[str, Callable[[Path], tuple[dict[str, Any], str | None]]]] = {
    ".npz": ("numpy .npz archive", _read_npz),
    ".npy": ("numpy .npy array", _read_npy),
    ".mat": ("MATLAB .mat file", _read_mat),
    ".safetensors": ("safetensors file", _read_safetensors),
    ".pt": ("PyTorch file", _read_torch),
    ".pth": ("PyTorch file", _read_torch),
    ".bin": ("PyTorch file", _read_torch),
}


def _resolve_activations(src: str, n_hidden: int, activation: Any, slope: Any, stored: str | None) -> list[Activation]:
    """One Activation per hidden layer from (in priority) the argument, the slope, or what the file stores."""
    if activation is not None and slope is not None:
        raise InputError(src, "give either an activation or a slope interval, not both")
    if slope is not None:
        try:
            if isinstance(slope, str):
                slope = [float(s) for s in slope.replace("[", "").replace("]", "").split(",")]
            a, b = (float(v) for v in slope)
            act = from_slope(a, b)
        except (TypeError, ValueError) as e:
            raise InputError(src, f"bad slope interval {slope!r}: expected two numbers A,B with A <= B "
                                  f"({_first_line(e)})") from None
        return [act] * n_hidden
    spec = activation if activation is not None else stored
    if n_hidden == 0:
        return []
    if spec is None:
        raise InputError(src, _MISSING_ACT)
    specs: list[Any]
    if isinstance(spec, Activation):
        specs = [spec]
    elif isinstance(spec, str):
        specs = [s for s in spec.split(",") if s.strip()]
    else:
        specs = list(spec)
    acts: list[Activation] = []
    for s in specs:
        if isinstance(s, Activation):
            acts.append(s)
            continue
        try:
            acts.append(get_activation(str(s)))
        except ValueError as e:
            problem = (f"unsupported activation {str(s).strip()!r}; supported: {', '.join(SUPPORTED)} (or --slope A,B)"
                       if "unknown activation" in str(e) else f"bad activation {str(s).strip()!r}: {e}")
            raise InputError(src, problem) from None
    if len(acts) == 1:
        return acts * n_hidden
    if len(acts) != n_hidden:
        raise InputError(src, f"{len(acts)} activations given for {n_hidden} hidden layers (give one, or one per "
                              "hidden layer)")
    return acts


def _mlp_from_ops(src: str, name: str, ops: list[_Op], activation: Any, slope: Any, stored: str | None) -> MLP:
    try:
        lins, slots = _assemble(src, ops)
    except InputError as e:
        ws = [op.W for op in ops if isinstance(op, _Lin)]
        fits_transposed = all(a.shape[1] == b.shape[0] for a, b in zip(ws, ws[1:], strict=False))
        if e.problem.startswith("shape mismatch") and fits_transposed:
            raise InputError(src, f"{e.problem} (the matrices look stored as in x out; lipzoo expects out x in "
                                  "as torch.nn.Linear stores them: transpose them)") from None
        raise
    unknown = [s for s in slots if s.act is None]
    named = iter(_resolve_activations(src, len(unknown), activation, slope, stored))
    acts = []
    for s in slots:
        a = s.act if s.act is not None else next(named)
        if s.pre is not None:
            a = _compose(s.pre, a)
        if s.post is not None:
            a = _compose(a, s.post)
        acts.append(a)
    mlp = _build(src, name, lins, acts)
    mlp.assumptions = [op.note for op in ops if isinstance(op, _Diag) and op.note]
    return mlp


def _stored_eps(src: str, stored: Any, given: float | None) -> float | None:
    """BatchNorm eps: the argument, else what the file stores (key/metadata `bn_eps`), else None (unknown)."""
    if given is not None:
        return float(given)
    if stored is None:
        return None
    try:
        return float(np.asarray(stored, dtype=np.float64).reshape(-1)[0] if not isinstance(stored, str) else stored)
    except (TypeError, ValueError, IndexError):
        raise InputError(src, f"bn_eps stored in the file is not a number: {stored!r}") from None


def load(source: Any, activation: str | Activation | Sequence[Any] | None = None,
         slope: Sequence[float] | str | None = None, name: str | None = None, bn_eps: float | None = None) -> MLP:
    """An MLP from a weight file path, a list/tuple of arrays, a dict of arrays, an nn.Module, or an MLP.

    Files: .npz (W1..WL out x in, optional b1..bL; or a 'weights' object array), ECLipsE .mat (cell array
    `weights`, optional `biases`), .safetensors / .pt / .pth state dicts of Linear (+BatchNorm1d) layers.
    Every failure is an InputError whose one-line message names the source and the problem.
    """
    if isinstance(source, MLP):
        return source
    if isinstance(source, nn.Module):
        return mlp_from_module(source, name=name)
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        src = str(source)
        name = name or path.name
        suffix = path.suffix.lower()
        if not path.exists():
            raise InputError(src, "file not found")
        if path.is_dir():
            raise InputError(src, "is a directory, not a weight file")
        if suffix not in _READERS:
            raise InputError(src, f"unsupported file type '{suffix or path.name}'; expected one of "
                                  f"{', '.join(FORMATS)} (or pass an nn.Module to lipcore.analyze)")
        what, reader = _READERS[suffix]
        try:
            size = path.stat().st_size
        except OSError as e:
            raise InputError(src, f"cannot read file ({_first_line(e)})") from None
        if size == 0:
            raise InputError(src, "empty file (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data, stored = reader(path)
        except InputError:
            raise
        except _FileProblem as e:
            raise InputError(src, f"cannot read {what}: {e}") from None
        except MemoryError:
            raise InputError(src, f"cannot read {what}: out of memory") from None
        except Exception as e:  # every library has its own corrupt-file exception; one line for the user
            raise InputError(src, f"cannot read {what} (corrupt or truncated?): {_first_line(e)}") from None
        eps = _stored_eps(src, data.pop("bn_eps", None), bn_eps)
        ops = _from_arrays_dict(src, data, ordered_source=suffix != ".safetensors", bn_eps=eps)  # safetensors sorts
        return _mlp_from_ops(src, name, ops, activation, slope, stored)
    src = name or "weights"
    if isinstance(source, Mapping):
        data = dict(source)
        stored = _meta_activation(data.pop("activation", None))
        eps = _stored_eps(src, data.pop("bn_eps", None), bn_eps)
        return _mlp_from_ops(src, src, _from_arrays_dict(src, {str(k): v for k, v in data.items()}, bn_eps=eps),
                             activation, slope, stored)
    if isinstance(source, list | tuple):
        if not source:
            raise InputError(src, "no weight matrices")
        if all(isinstance(x, tuple) and len(x) == 2 and _is_arraylike(x[0]) for x in source):  # [(W, b), ...]
            items = [(f"{kind}{k}", x) for k, pair in enumerate(source, 1) for kind, x in zip("Wb", pair, strict=True)
                     if x is not None]
        else:
            items = [(f"weights[{k}]", x) for k, x in enumerate(source, 1)]
        return _mlp_from_ops(src, src, _from_sequence(src, items), activation, slope, None)
    if _is_arraylike(source):
        return _mlp_from_ops(src, src, _from_weight_lists(src, source, None), activation, slope, None)
    raise InputError(src, f"cannot bound a {type(source).__name__}: pass an nn.Module, a weight file path "
                          f"({', '.join(FORMATS)}), or a list of weight matrices")

