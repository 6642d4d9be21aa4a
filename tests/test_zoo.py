"""Zoo manifests: the demo zoo, validation with one-line errors, overrides, entry lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.zoo import DEFAULT_AUDIT_VARIANTS, ZooError, adhoc_zoo, entry_for, load_zoo, override, parse_zoo


def test_demo_zoo_parses_and_discovers_offline():
    from flows import hubs
    from flows.refs import ModelRef

    z = load_zoo(None)
    assert z.name == "demo" and {e.hub for e in z.entries} == {"bench", "local", "timm"}
    refs = [r for e in z.entries for r in hubs.discover(e)]
    assert all(isinstance(r, ModelRef) for r in refs)
    ids = [r.model_id for r in refs]
    assert "bench:eclipse/lyr2n20" in ids and "timm:test_resnet" in ids
    assert "local:demo/digits/cnn_small.safetensors" in ids
    assert sum(i.startswith("local:demo/digits/mlp_") for i in ids) >= 4
    assert next(r for r in refs if r.hub == "timm").revision.startswith("random-init:seed=0:timm=")
    # the SDP only on small nets: never on a convolutional or timm entry
    for e in z.entries:
        if e.hub == "timm" or e.settings.input_shape:
            assert "lipsdp-neuron" not in e.settings.variants


@pytest.mark.parametrize("data, msg", [
    ({"models": [{"hub": "nope"}]}, "hub must be one of"),
    ({"models": [{"hub": "hf"}]}, "needs author"),
    ({"models": [{"hub": "timm", "models": ["x"], "colour": "red"}]}, "unknown key(s) colour"),
    ({"models": [{"hub": "timm", "models": ["x"], "variants": ["fastest"]}]}, "unknown variant(s) fastest"),
    ({"models": [{"hub": "timm", "models": ["x"], "device": "tpu"}]}, "device must be one of"),
    ({"models": [{"hub": "timm", "models": ["x"], "input_shape": [3, -1]}]}, "input_shape"),
    ({"models": []}, "at least one"),
    ({"zoo": 1, "models": [{"hub": "bench", "nets": ["lyr2n20"]}]}, "unknown key(s) zoo"),
])
def test_bad_manifests_give_one_line_errors(data, msg):
    with pytest.raises(ZooError) as e:
        parse_zoo(data, source="z.toml")
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_toml_file_paths_and_overrides(tmp_path):
    (tmp_path / "ck").mkdir()
    p = tmp_path / "z.toml"
    p.write_text('name = "z"\nbudget_s = 30\nvariants = ["naive"]\n'
                 '[[models]]\nhub = "local"\npath = "ck"\nactivation = "tanh"\n'
                 '[[models]]\nhub = "hf"\nauthor = "org"\nvariants = ["eclipse-fast"]\n')
    z = load_zoo(p)
    loc, h = z.entries
    assert loc.params["path"] == str((tmp_path / "ck").resolve())
    assert loc.settings.variants == ("naive",) and loc.settings.activation == "tanh" and loc.settings.budget_s == 30
    assert h.settings.variants == ("eclipse-fast",)
    z2 = override(z, variants=["sh-combined"], device="cpu", budget_s=5)
    assert all(e.settings.variants == ("sh-combined",) and e.settings.device == "cpu" for e in z2.entries)
    assert z.entries[0].settings.variants == ("naive",)  # the original is untouched
    assert entry_for(z, "hf", "org/m") is h and entry_for(z, "hf", "else/m") is None
    assert entry_for(z, "local", "ck/a.safetensors") is loc
    with pytest.raises(ZooError, match="not found"):
        load_zoo(tmp_path / "missing.toml")
    p.write_text("name = [")
    with pytest.raises(ZooError, match="invalid TOML"):
        load_zoo(p)


def test_adhoc_zoo_from_cli_flags(tmp_path):
    d = adhoc_zoo(hf=["org", "org/one"], timm=["resnet1*"], local=[str(tmp_path)], activation="relu")
    z = parse_zoo(d)
    assert [e.hub for e in z.entries] == ["hf", "hf", "timm", "local"]
    assert z.entries[0].params["author"] == "org" and z.entries[1].params["repos"] == ["org/one"]
    assert z.entries[3].params["path"] == str(Path(tmp_path).resolve())
    assert z.entries[0].settings.variants == DEFAULT_AUDIT_VARIANTS and z.entries[0].settings.activation == "relu"


# ----------------------------------------------------------------- full validation before any work (issue 16)

@pytest.mark.parametrize(("entry", "match"), [
    ({"hub": "local", "path": 42}, r"path must be a non-empty string, got 42"),
    ({"hub": "timm", "models": ["resnet18"], "pattern": 5}, r"unknown key\(s\) pattern"),
    ({"hub": "timm", "models": ["resnet18"], "seed": "zero"}, r"seed must be an integer, got 'zero'"),
    ({"hub": "timm", "models": 5}, r"models must be"),
    ({"hub": "hf", "repos": "org/a", "limit": "3"}, r"limit must be a positive integer"),
    ({"hub": "hf", "repos": ["org/a"], "revison": "main"}, r"did you mean 'revision'"),
    ({"hub": "hf", "repos": ["org/a"], "options": {"lower-sampled": {"smaples": 8}}},
     r"options\.lower-sampled\.smaples: unknown option \(did you mean 'samples'\?\)"),
    ({"hub": "hf", "repos": ["org/a"], "options": {"eclipse-fats": {}}}, r"did you mean 'eclipse-fast'"),
    ({"hub": "hf", "repos": ["org/a"], "slope": ["a", 1]}, r"slope must be \[alpha, beta\]"),
])
def test_every_key_is_type_checked_and_typos_name_the_close_match(entry, match):
    with pytest.raises(ZooError, match=match) as e:
        parse_zoo({"name": "t", "models": [entry]})
    assert "\n" not in str(e.value)


def test_declared_options_of_the_demo_and_docs_are_accepted():
    from flows.zoo import variant_option_keys

    assert {"samples", "power_iters", "batch"} <= variant_option_keys("lower-sampled")
    assert {"starts", "steps", "jv_steps"} <= variant_option_keys("lower-ascent")
    assert "steps" in variant_option_keys("optimized")
    z = parse_zoo({"name": "t", "options": {"optimized": {"steps": 200}, "lower-sampled": {"samples": 64}},
                   "models": [{"hub": "hf", "repos": ["org/a"]}]})
    assert z.entries[0].settings.options["optimized"] == {"steps": 200}
    load_zoo(None)  # the embedded demo manifest validates


def test_a_local_pattern_that_matches_nothing_is_an_error(tmp_path):
    (tmp_path / "a.npz").write_bytes(b"")
    parse_zoo({"name": "t", "models": [{"hub": "local", "path": str(tmp_path), "pattern": "*.npz"}]})
    with pytest.raises(ZooError, match=r"pattern '\*\.safetensor' matches no weight file"):
        parse_zoo({"name": "t", "models": [{"hub": "local", "path": str(tmp_path),
                                            "pattern": ["*.npz", "*.safetensor"]}]})


def test_a_failed_discovery_records_the_real_model_ids():
    from flows.audit import _entry_ids
    from flows.refs import Settings
    from flows.zoo import Entry

    e = Entry("hf", {"repos": ["org/a", "org/b"]}, Settings(variants=("naive",)), "hf#1")
    assert _entry_ids(e) == ["org/a", "org/b"]
    assert _entry_ids(Entry("timm", {"models": "resnet1*"}, Settings(variants=("naive",)), "timm#1")) == ["resnet1*"]


def test_an_entry_that_discovers_nothing_fails_the_audit(tmp_path, prefect_harness):
    from flows.audit import AuditFailed, audit_zoo

    (tmp_path / "empty").mkdir()
    with pytest.raises(AuditFailed, match="local:empty: matched no model"):
        audit_zoo({"name": "t", "variants": ["naive"], "models": [{"hub": "local", "path": str(tmp_path / "empty")}]},
                  catalog=str(tmp_path / "c.duckdb"), device="cpu")
