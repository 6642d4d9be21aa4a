"""Adding a hub is one module with a `HUB = Hub(...)` plus one registry line: a hub written here, in the test,
audits end to end through a real manifest, the real CLI, a real Prefect (test harness) and a real DuckDB file.

The toy hub serves two tiny MLPs from a dict. Nothing else in lipzoo is edited or patched: the zoo validates its
entries with the keys and checks the hub declares, the audit discovers, narrows and pins through it, and the
catalog stores its rows under `toy:<repo_id>`.
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

TOY_MODULE = "lipzoo_test_toy_hub"
TOY_SOURCE = '''
"""A hub written in a test: named tiny MLPs from a dict; the revision is the weights' digest."""
import hashlib

import numpy as np

from flows.hubs import STR_LIST, EntryError, Hub, HubError, as_list
from flows.refs import Loaded, ModelRef, Unresolved


def _net(seed, widths):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b, a)) / np.sqrt(a) for a, b in zip(widths[:-1], widths[1:])]


MODELS = {"tiny-a": _net(1, (4, 8, 3)), "tiny-b": _net(2, (4, 6, 6, 2))}


def _digest(ws):
    h = hashlib.sha256()
    for w in ws:
        h.update(w.tobytes())
    return h.hexdigest()[:16]


def discover(entry):
    out = []
    for name in as_list(entry.params["names"]):
        if name in MODELS:
            out.append(ModelRef("toy", f"dict/{name}", _digest(MODELS[name]), "mlp"))
        else:
            out.append(Unresolved("toy", f"dict/{name}", "no such toy model"))
    return out


def fetch(ref, settings):
    from lipcore import MLP, get_activation

    ws = MODELS[ref.repo_id.split("/", 1)[1]]
    if _digest(ws) != ref.revision:
        raise HubError(f"{ref.model_id}: changed since discovery")
    net = MLP.from_arrays(ws, get_activation("relu"), name=ref.model_id)
    return Loaded(net, input_shape=(ws[0].shape[1],), activation="relu", architecture="mlp")


def _validate(params, base_dir):
    if not params.get("names"):
        raise EntryError('needs names = ["tiny-a", ...]')
    return params


HUB = Hub(
    name="toy", discover=discover, fetch=fetch, keys={"names": STR_LIST}, validate=_validate,
    lists=lambda params, repo_id: repo_id.split("/", 1)[1] in as_list(params.get("names")),
    narrow=lambda params, repo_id, revision: {**params, "names": [repo_id.split("/", 1)[1]]},
    named=lambda params: [f"dict/{n}" for n in as_list(params.get("names"))],
    adhoc=lambda repo_id: {"names": [repo_id.split("/", 1)[1]]},
    cli=lambda values: [({"names": list(values)}, "toy:" + ",".join(values))],
    flag_help="toy models by name; repeatable", flag_metavar="NAME",
)
'''

VARIANTS = ["naive", "eclipse-fast", "sh-combined", "lower-sampled"]


@pytest.fixture
def toy_hub(tmp_path, monkeypatch):
    """The toy module on sys.path and registered: the one line a new hub needs."""
    from flows.hubs import HUB_MODULES, register_hub

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{TOY_MODULE}.py").write_text(textwrap.dedent(TOY_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    register_hub("toy", TOY_MODULE)
    yield importlib.import_module(TOY_MODULE)
    HUB_MODULES.pop("toy", None)
    sys.modules.pop(TOY_MODULE, None)


def manifest(tmp_path: Path, names: str = '["tiny-a", "tiny-b", "tiny-missing"]') -> Path:
    p = tmp_path / "toy.toml"
    p.write_text(f'name = "toyzoo"\nvariants = {json.dumps(VARIANTS)}\n'
                 '[options.lower-sampled]\nsamples = 64\n'
                 f'[[models]]\nhub = "toy"\nnames = {names}\n')
    return p


@pytest.mark.parametrize(("entry", "match"), [
    ({"hub": "toy"}, r"models entry 1 \(hub 'toy'\): needs names = \[\"tiny-a\", \.\.\.\]"),
    ({"hub": "toy", "names": ["tiny-a"], "colour": "red"}, r"unknown key\(s\) colour"),
    ({"hub": "toy", "names": 5}, r"names must be a string or a list of strings, got 5"),
    ({"hub": "toy", "nmaes": ["tiny-a"]}, r"did you mean 'names'"),
    ({"hub": "toy", "names": ["tiny-a"], "path": "x"}, r"unknown key\(s\) path"),  # another hub's key
])
def test_the_zoo_validates_a_new_hubs_entries_with_what_the_hub_declares(toy_hub, entry, match):
    from flows.zoo import ZooError, parse_zoo

    with pytest.raises(ZooError, match=match) as e:
        parse_zoo({"name": "t", "models": [entry]})
    assert "\n" not in str(e.value)


def test_an_unregistered_or_undeclared_hub_is_refused_by_name(toy_hub, tmp_path):
    from flows.hubs import HUB_MODULES, HubError, get_hub, register_hub
    from flows.zoo import ZooError, parse_zoo

    assert "toy" in HUB_MODULES and get_hub("toy") is toy_hub.HUB
    (tmp_path / "mods" / "lipzoo_test_no_hub.py").write_text("def discover(entry):\n    return []\n")
    register_hub("nohub", "lipzoo_test_no_hub")
    try:
        with pytest.raises(HubError, match=r"lipzoo_test_no_hub declares no HUB = Hub\(name='nohub'"):
            get_hub("nohub")
    finally:
        HUB_MODULES.pop("nohub")
        sys.modules.pop("lipzoo_test_no_hub", None)
    with pytest.raises(ZooError, match="hub must be one of hf, timm, local, bench, toy"):
        parse_zoo({"name": "t", "models": [{"hub": "toys", "names": ["a"]}]})


def test_a_new_hubs_flag_comes_from_its_declaration(toy_hub, tmp_path, capsys):
    """`lipzoo audit --toy NAME` exists because the toy HUB declares flag_help and cli; the CLI names no hub."""
    from lipzoo.cli import CliError, build_parser
    from lipzoo.cli.audit import _zoo_arg

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["audit", "--help"])
    assert "--toy NAME" in capsys.readouterr().out
    args = parser.parse_args(["audit", "--toy", "tiny-a", "--toy", "tiny-b", "--activation", "relu"])
    d = _zoo_arg(args)
    assert d["name"] == "toy:tiny-a,tiny-b"
    assert d["models"] == [{"hub": "toy", "names": ["tiny-a", "tiny-b"], "activation": "relu"}]
    with pytest.raises(CliError, match="give either a zoo manifest or --hf/--timm/--local/--toy, not both"):
        _zoo_arg(parser.parse_args(["audit", "z.toml", "--toy", "tiny-a"]))
    with pytest.raises(CliError, match=r"--local .*nope: no such file or directory"):
        _zoo_arg(parser.parse_args(["audit", "--local", str(tmp_path / "nope")]))


def _cli(capsys, *argv: str) -> tuple[int, str]:
    from lipzoo.cli import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = main(list(argv))
    finally:  # `lipzoo audit` installs its stop-on-signal handlers in this (pytest's) process
        for s, h in saved.items():
            signal.signal(s, h)
    return rc, capsys.readouterr().out


@pytest.mark.usefixtures("prefect_harness")
def test_a_hub_written_in_a_test_audits_end_to_end_through_the_cli(toy_hub, tmp_path, capsys):
    import lipcore
    from catalogs import Catalog
    from flows.audit import audit_model
    from flows.zoo import entry_for, load_zoo

    zoo, cat = manifest(tmp_path), tmp_path / "toy.duckdb"
    rc, out = _cli(capsys, "audit", str(zoo), "--catalog", str(cat), "--device", "cpu", "--json")
    summary = json.loads(out)
    assert rc == 1  # tiny-missing is a failed row naming the hub's reason; the two real models landed
    assert (summary["audited"], summary["ok"], summary["failed"]) == (2, 2, 1)
    assert summary["failures"][0] == {"model_id": "toy:dict/tiny-missing", "revision": "unresolved",
                                      "reason": "no such toy model"}

    with Catalog(cat, read_only=True).connect() as con:
        rows = con.execute("SELECT r.model_id, m.hub, m.repo_id, r.revision, r.variant, r.status, r.value "
                           "FROM results r JOIN models m USING (model_id) ORDER BY 1, 5").fetchall()
    by = {(r[0], r[4]): r for r in rows}
    assert {r[0] for r in rows} == {"toy:dict/tiny-a", "toy:dict/tiny-b", "toy:dict/tiny-missing"}
    assert all(r[1] == "toy" and r[0] == f"toy:{r[2]}" for r in rows)
    for name in ("tiny-a", "tiny-b"):
        ws = toy_hub.MODELS[name]
        direct = lipcore.analyze(lipcore.MLP.from_arrays(ws, lipcore.get_activation("relu")), VARIANTS,
                                 options={"lower-sampled": {"samples": 64}})
        naive = float(np.prod([np.linalg.norm(w, 2) for w in ws]))
        assert by[(f"toy:dict/{name}", "naive")][6] == pytest.approx(naive, rel=1e-9)
        for v in VARIANTS:
            row = by[(f"toy:dict/{name}", v)]
            assert row[5] == "ok" and row[3] == toy_hub._digest(ws)
            assert row[6] == pytest.approx(direct.results[v].value, rel=1e-9 if v != "lower-sampled" else 0.5)
        low, best = by[(f"toy:dict/{name}", "lower-sampled")][6], by[(f"toy:dict/{name}", "sh-combined")][6]
        assert 0 < low <= best * (1 + 1e-9) <= naive * (1 + 1e-9)  # certified upper >= measured lower

    rc, out = _cli(capsys, "leaderboard", "--hub", "toy", "--format", "json", "--catalog", str(cat))
    assert rc == 0 and {r["model_id"] for r in json.loads(out)} >= {"toy:dict/tiny-a", "toy:dict/tiny-b"}

    # re-auditing one model goes through the hub's lists / narrow / pin: up to date at its own revision
    z = load_zoo(zoo)
    assert entry_for(z, "toy", "dict/tiny-b") is z.entries[0] and entry_for(z, "toy", "dict/other") is None
    rev = toy_hub._digest(toy_hub.MODELS["tiny-b"])
    s = audit_model("toy", "dict/tiny-b", rev[:8], zoo=str(zoo), catalog=str(cat))
    assert (s["discovered"], s["up_to_date"], s["audited"]) == (1, 1, 0)
    with pytest.raises(ValueError, match="requested revision 0000 but the file is now at"):
        audit_model("toy", "dict/tiny-b", "0000", zoo=str(zoo), catalog=str(cat))
