"""The audit flows end to end: a real Prefect (test harness server), a real local HTTP hub, a real DuckDB catalog.

What must hold: results land in the catalog with the values lipcore computes; a corrupt checkpoint, a missing
repo and an unsupported architecture each become a failed/refused row while the rest lands and the flow ends
Failed (never Completed with lost results); a second audit with nothing new computes nothing; a new revision
makes watch re-audit that model only, with an event.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from fakehub import FakeHub
from safetensors.torch import save_file
from torch import nn

pytestmark = pytest.mark.usefixtures("prefect_harness")

VARIANTS = ["naive", "eclipse-fast", "sh-combined", "lower-sampled"]
OPTIONS = {"lower-sampled": {"samples": 64}}


def mlp_file(path: Path, seed: int, act: str = "relu") -> Path:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(5, 7), nn.ReLU() if act == "relu" else nn.Tanh(), nn.Linear(7, 2))
    save_file(m.state_dict(), str(path), metadata={"activation": act})
    return path


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with FakeHub() as h:
        yield h


def zoo(hub: FakeHub, **extra: Any) -> dict[str, Any]:
    return {"name": "t", "variants": VARIANTS, "options": OPTIONS, "budget_s": 60,
            "models": [{"hub": "hf", "author": "org", "endpoint": hub.url, **extra}]}


def results(cat: Path) -> list[dict[str, Any]]:
    from catalogs import Catalog

    with Catalog(cat, read_only=True).connect() as con:
        cur = con.execute("SELECT model_id, revision, variant, status, value, reason, run_id FROM results "
                          "ORDER BY model_id, revision, variant")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def test_audit_end_to_end_failures_are_rows_and_the_flow_fails(hub, tmp_path):
    import lipcore
    from flows.audit import AuditFailed, audit_zoo

    a = mlp_file(tmp_path / "a.safetensors", 1)
    sha_a = hub.publish("org/mlp-a", {"model.safetensors": a})
    hub.publish("org/mlp-b", {"model.safetensors": mlp_file(tmp_path / "b.safetensors", 2, "tanh")})
    hub.publish("org/corrupt", {"model.safetensors": b"\x20\x00\x00\x00\x00\x00\x00\x00{definitely not json"})
    hub.publish("org/alien", {"config.json": json.dumps({"architecture": "not_a_timm_arch"}),
                              "model.safetensors": a})
    cat = tmp_path / "c.duckdb"
    with pytest.raises(AuditFailed) as err:
        audit_zoo(zoo(hub, repos=["org/missing"]), catalog=str(cat), device="cpu")
    s = err.value.summary
    assert (s["ok"], s["refused"], s["failed"], s["audited"]) == (2, 1, 2, 4)
    assert "corrupt" in str(err.value) or "missing" in str(err.value)

    rows = results(cat)
    by = {(r["model_id"], r["variant"]): r for r in rows}
    direct = lipcore.analyze(a, VARIANTS, options=OPTIONS)
    for v in ("naive", "eclipse-fast", "sh-combined"):
        r = by[("hf:org/mlp-a", v)]
        assert r["status"] == "ok" and r["revision"] == sha_a
        assert r["value"] == pytest.approx(direct.results[v].value, rel=1e-12)
    low = by[("hf:org/mlp-a", "lower-sampled")]["value"]
    assert 0 < low <= by[("hf:org/mlp-a", "sh-combined")]["value"] * (1 + 1e-9)
    assert all(by[("hf:org/mlp-b", v)]["status"] == "ok" for v in VARIANTS)
    corrupt = by[("hf:org/corrupt", "*")]
    assert corrupt["status"] == "failed" and "corrupt or unreadable safetensors" in corrupt["reason"]
    missing = by[("hf:org/missing", "*")]
    assert missing["status"] == "failed" and missing["revision"] == "unresolved"
    assert "repository not found" in missing["reason"]
    assert {by[("hf:org/alien", v)]["status"] for v in VARIANTS} == {"refused"}
    assert "not_a_timm_arch" in by[("hf:org/alien", "naive")]["reason"]

    from catalogs import Catalog

    (run,) = Catalog(cat, read_only=True).runs()
    assert run["status"] == "failed" and run["run_id"] == s["run_id"]

    # again: the two good models and the refused one are settled; only the failures are retried
    with pytest.raises(AuditFailed) as err2:
        audit_zoo(zoo(hub, repos=["org/missing"]), catalog=str(cat), device="cpu")
    s2 = err2.value.summary
    assert (s2["up_to_date"], s2["audited"], s2["ok"], s2["failed"]) == (3, 1, 0, 2)


def test_second_audit_computes_nothing_and_watch_reaudits_only_the_new_revision(hub, tmp_path):
    from flows.audit import EVENT_NEW_CHECKPOINT, audit_zoo, watch_zoo

    hub.publish("org/mlp-a", {"model.safetensors": mlp_file(tmp_path / "a.safetensors", 1)})
    hub.publish("org/mlp-b", {"model.safetensors": mlp_file(tmp_path / "b.safetensors", 2)})
    cat = str(tmp_path / "c.duckdb")
    s1 = audit_zoo(zoo(hub), catalog=cat)
    assert (s1["audited"], s1["ok"], s1["failed"], s1["rows_written"]) == (2, 2, 0, 2 * len(VARIANTS))

    t0 = time.time()
    s2 = audit_zoo(zoo(hub), catalog=cat)
    assert (s2["audited"], s2["up_to_date"], s2["rows_written"], s2["lipcore_seconds"]) == (0, 2, 0, 0)

    s3 = watch_zoo(zoo(hub), catalog=cat)  # nothing new
    assert s3["new_revisions"] == [] and s3["audited"] == 0

    new_sha = hub.publish("org/mlp-b", {"model.safetensors": mlp_file(tmp_path / "b2.safetensors", 3)})
    s4 = watch_zoo(zoo(hub), catalog=cat)
    assert [e["model_id"] for e in s4["new_revisions"]] == ["hf:org/mlp-b"]
    assert s4["new_revisions"][0]["revision"] == new_sha
    assert (s4["audited"], s4["ok"]) == (1, 1)
    rows = results(Path(cat))
    b_revs = {r["revision"] for r in rows if r["model_id"] == "hf:org/mlp-b"}
    assert new_sha in b_revs and len(b_revs) == 2
    assert {r["run_id"] for r in rows if r["model_id"] == "hf:org/mlp-a"} == {s1["run_id"]}
    assert {r["run_id"] for r in rows if r["revision"] == new_sha} == {s4["run_id"]}
    assert _events_seen(EVENT_NEW_CHECKPOINT, since=t0) >= 1


def _events_seen(name: str, since: float, wait_s: float = 20.0) -> int:
    """Count events of this name stored by the server (the events pipeline is asynchronous: poll)."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    until = datetime.now(UTC) + timedelta(minutes=10)
    flt = EventFilter(event=EventNameFilter(name=[name]),
                      occurred=EventOccurredFilter(since=datetime.fromtimestamp(since, UTC), until=until))
    deadline = time.time() + wait_s
    n = 0
    while time.time() < deadline:
        with get_client(sync_client=True) as client:
            page = client.read_events(flt, limit=50)
        n = len(page.events)
        if n:
            ev = page.events[0]
            assert ev.resource["lipzoo.hub"] == "hf" and ev.payload["revision"]
            return n
        time.sleep(0.5)
    return n


def test_audit_model_pins_a_revision_and_a_tiny_budget_is_no_failure(hub, tmp_path):
    from flows.audit import audit_model

    old = hub.publish("org/mlp-a", {"model.safetensors": mlp_file(tmp_path / "a.safetensors", 1)})
    new = hub.publish("org/mlp-a", {"model.safetensors": mlp_file(tmp_path / "a2.safetensors", 2)})
    cat = str(tmp_path / "c.duckdb")
    s = audit_model("hf", "org/mlp-a", old, zoo=zoo(hub), catalog=cat)
    assert (s["audited"], s["ok"]) == (1, 1)
    assert {r["revision"] for r in results(Path(cat))} == {old}
    s = audit_model("hf", "org/mlp-a", zoo=zoo(hub), catalog=cat, variants=["naive"])
    assert {r["revision"] for r in results(Path(cat))} == {old, new}
    # a budget too small for the work: never a failure after spending it; the variant either kept what it
    # measured in its first batch or was not started, and the row says which
    s = audit_model("hf", "org/mlp-a", zoo=zoo(hub), catalog=cat, variants=["lower-ascent"], budget_s=1e-3,
                    force=True)
    assert s["failures"] == [] and s["variants_failed"] == 0
    (row,) = [r for r in results(Path(cat)) if r["variant"] == "lower-ascent"]
    assert (row["status"] == "ok" and row["value"] > 0) or (row["status"] == "refused" and "budget" in row["reason"])
