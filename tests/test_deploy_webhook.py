"""The webhook endpoint of deploy/README.md, run as written (extracted from the README) on 127.0.0.1.

Hub-shaped deliveries are posted to it; the events it emits must reach the Prefect server with exactly the
resource and payload keys the on-checkpoint trigger templates read.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jinja2

from deploy.serve import EVENT, TRIGGER_PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret"


def _snippet() -> str:
    text = (ROOT / "deploy" / "README.md").read_text()
    m = re.search(r"```python\n(# hub_webhook\.py.*?)```", text, re.S)
    assert m, "the README's webhook block is missing"
    return m.group(1)


def _post(url: str, body: dict, secret: str) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-Webhook-Secret": secret})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (loopback)
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _delivery(repo: str, sha: str, kind: str = "model", scope: str = "repo.content") -> dict:
    return {"event": {"action": "update", "scope": scope},
            "repo": {"type": kind, "name": repo, "id": "6500", "private": False, "headSha": sha},
            "updatedRefs": [{"ref": "refs/heads/main", "oldSha": "0" * 40, "newSha": sha}]}


def _events(api: str) -> list[dict]:
    req = urllib.request.Request(f"{api}/events/filter", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"filter": {"event": {"name": [EVENT]}}, "limit": 50}).encode())
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 (loopback)
        return json.loads(r.read())["events"]


def test_readme_webhook_endpoint_emits_the_checkpoint_event(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "hub_webhook.py"
    script.write_text(_snippet())
    env = {**os.environ, "PREFECT_API_URL": api, "HF_WEBHOOK_SECRET": SECRET, "HOST": "127.0.0.1", "PORT": str(port)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    sha = "c0ffee" + "1" * 34
    try:
        deadline = time.time() + 60
        while True:  # until the endpoint listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-2000:]
                time.sleep(0.2)
        assert _post(url, _delivery("acme/mlp", sha), "wrong") == 403
        assert _post(url, _delivery("acme/data", "2" * 40, kind="dataset"), SECRET) == 204  # ignored
        assert _post(url, _delivery("acme/mlp", "3" * 40, scope="discussion"), SECRET) == 204  # ignored
        assert _post(url, _delivery("acme/mlp", sha), SECRET) == 204
        deadline = time.time() + 30
        while not (events := [e for e in _events(api) if e["resource"].get("lipzoo.repo_id") == "acme/mlp"]):
            assert time.time() < deadline, "the event never reached the server"
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    time.sleep(1.0)  # anything else it emitted has arrived by now
    events = [e for e in _events(api) if e["resource"].get("lipzoo.repo_id", "").startswith("acme/")]
    assert len(events) == 1, events  # the wrong secret, the dataset and the discussion emitted nothing
    (ev,) = events
    assert ev["event"] == EVENT and ev["resource"]["prefect.resource.id"] == "lipzoo.model.hf:acme/mlp"
    # what the on-checkpoint trigger will make of it
    env_j = jinja2.Environment(undefined=jinja2.StrictUndefined)
    params = {k: env_j.from_string(v).render(event=ev) for k, v in TRIGGER_PARAMETERS.items()}
    assert params == {"hub": "hf", "repo_id": "acme/mlp", "revision": sha}
