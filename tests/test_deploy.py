"""The deployments `lipzoo serve` serves, checked as objects (no server): names, schedules, trigger templates;
deploy/prefect.yaml against the flows it names; the serve/report command lines.

The served path itself (a Prefect server on loopback, an emitted event, the re-audit) is in
tests/test_deploy_served.py (slow).
"""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from pathlib import Path

import pytest

from deploy.serve import EVENT, TRIGGER_PARAMETERS, build_deployments, checkpoint_trigger
from lipzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "deploy" / "zoos" / "demo.toml"
# the deployments wrap flows/audit.py's flows (written beside this part); without them only the CLI checks run
needs_flows = pytest.mark.skipif(importlib.util.find_spec("flows.audit") is None,
                                 reason="flows/audit.py (the audit flows) is not in this checkout")


def _by_name(deps):
    return {f"{d.flow_name}/{d.name}": d for d in deps}


@needs_flows
def test_three_deployments_with_schedules_and_the_checkpoint_trigger(tmp_path):
    deps = _by_name(build_deployments(DEMO, cron="30 1 * * *", watch_every=5, catalog=tmp_path / "c.duckdb",
                                      runner="dask://127.0.0.1:8786"))
    assert set(deps) == {"audit-zoo/audit-nightly", "watch-zoo/watch", "audit-model/on-checkpoint"}
    common = {"zoo": str(DEMO), "catalog": str(tmp_path / "c.duckdb"), "runner": "dask://127.0.0.1:8786"}

    nightly = deps["audit-zoo/audit-nightly"]
    (sched,) = nightly.schedules
    assert sched.schedule.cron == "30 1 * * *" and sched.schedule.timezone == "UTC"
    assert nightly.parameters == common and nightly.entrypoint == "flows.audit.audit_zoo"

    watch = deps["watch-zoo/watch"]
    (sched,) = watch.schedules
    assert sched.schedule.interval == timedelta(minutes=5)
    # the watcher only announces; the triggered deployment audits (no double work)
    assert watch.parameters == {**common, "audit": False, "emit": True}

    on_ckpt = deps["audit-model/on-checkpoint"]
    assert on_ckpt.schedules == [] and on_ckpt.entrypoint == "flows.audit.audit_model"
    (trig,) = on_ckpt.triggers
    assert trig.expect == {EVENT} == {"lipzoo.checkpoint.new"}
    assert trig.match.model_dump() == {"prefect.resource.id": "lipzoo.model.*"}
    assert trig.parameters == {**common, "hub": "{{ event.resource['lipzoo.hub'] }}",
                               "repo_id": "{{ event.resource['lipzoo.repo_id'] }}",
                               "revision": "{{ event.payload.revision }}"}
    assert trig.posture.value == "Reactive" and trig.threshold == 1


@needs_flows
def test_trigger_templates_match_what_the_watcher_emits(monkeypatch):
    """flows.audit emits the event; the trigger reads it: render the templates on a real emitted shape."""
    import jinja2

    import flows.audit as audit
    from flows.refs import ModelRef

    captured = {}
    # capture the event flows.audit builds instead of sending it (the served test sends real ones)
    monkeypatch.setattr("prefect.events.emit_event", lambda **kw: captured.update(kw))
    ref = ModelRef("hf", "acme/mlp", "a" * 40, "mlp", None)
    audit._emit_new_checkpoint(ref, "b" * 40, audit.load_zoo(None))
    assert captured["event"] == EVENT
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    rendered = {k: env.from_string(v).render(event=captured) for k, v in TRIGGER_PARAMETERS.items()}
    assert rendered == {"hub": "hf", "repo_id": "acme/mlp", "revision": "a" * 40}
    assert captured["resource"]["prefect.resource.id"].startswith("lipzoo.model.")


@needs_flows
def test_without_trigger_the_watcher_audits_itself_and_none_is_left_out(tmp_path):
    deps = _by_name(build_deployments(None, cron=None, watch_every=1, catalog=tmp_path / "c.duckdb", trigger=False))
    assert set(deps) == {"watch-zoo/watch"}
    assert deps["watch-zoo/watch"].parameters == {"catalog": str(tmp_path / "c.duckdb"), "audit": True, "emit": True}
    assert build_deployments(None, cron=None, watch_every=None, trigger=False) == []
    assert checkpoint_trigger().parameters == TRIGGER_PARAMETERS


@needs_flows
def test_prefect_yaml_names_real_flows_and_the_process_pool():
    import yaml

    spec = yaml.safe_load((ROOT / "deploy" / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    assert set(deps) >= {"audit-nightly", "watch", "on-checkpoint"}
    import importlib

    flows_of = {"audit-nightly": "audit-zoo", "watch": "watch-zoo", "on-checkpoint": "audit-model"}
    for name, d in deps.items():
        mod, _, fn = d["entrypoint"].rpartition(".")  # module paths: workers need the package, not a checkout
        assert getattr(importlib.import_module(mod), fn).name == flows_of[name], d["entrypoint"]
        assert d["work_pool"]["name"] == "lipzoo-gpu"
        # workers pin their GPU; the deployment must not override it for all of them
        assert "CUDA_VISIBLE_DEVICES" not in d["work_pool"]["job_variables"]["env"]
        assert d["work_pool"]["job_variables"]["env"]["LIPZOO_GPU_SLOTS"] == "1"
    (trig,) = deps["on-checkpoint"]["triggers"]
    assert trig["expect"] == [EVENT]
    assert {k: v for k, v in trig["parameters"].items() if k in TRIGGER_PARAMETERS} == TRIGGER_PARAMETERS
    assert deps["audit-nightly"]["schedules"][0]["cron"] == "0 3 * * *"


# ------------------------------------------------------------------------------------------ command lines

def test_help_teaches(capsys):
    for cmd in ("serve", "report"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "audit-model/on-checkpoint" in out and "prefect event emit lipzoo.checkpoint.new" in out
    assert "lipzoo report --model" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "nope.toml"], "zoo manifest nope.toml not found"),
    (["serve", "--cron", "every night"], "is not a cron expression"),
    (["serve", "--runner", "spark://x"], "unknown --runner"),
    (["serve", "--watch-every", "0"], "--watch-every must be a positive"),
    (["report", "--catalog", "/nonexistent/c.duckdb"], "catalog /nonexistent/c.duckdb not found"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_report_command_writes_the_page(tmp_path, capsys):
    from catalogs import Catalog, ResultRow

    cat = tmp_path / "c.duckdb"
    Catalog(cat).write([
        ResultRow("hf:acme/m", "hf", "acme/m", "r1", "eclipse-fast", "upper", "ok", 2.5),
        ResultRow("hf:acme/m", "hf", "acme/m", "r1", "lower-sampled", "lower", "ok", 1.25),
    ])
    out = tmp_path / "site" / "r.html"
    assert main(["report", "--catalog", str(cat), "--out", str(out), "--model", "acme/m"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    assert 'class="bounds-plot"' in page and "×2.000" in page
    assert main(["report", "--catalog", str(cat), "--out", str(out), "--model", "zzz"]) == 2
    assert "unknown model 'zzz'" in capsys.readouterr().err
