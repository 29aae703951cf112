"""The API models: examples parse and round-trip, invalid specs name the field, CRDs are current."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_cases import BASE, INVALID, INVALID_NAMES
from kubeforge import crdgen
from kubeforge.api import KINDS, hp_env_name, hp_env_value
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") in KINDS]


class TestExamples:
    @pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
    def test_parse_and_round_trip(self, path: Path) -> None:
        docs = _docs(path)
        for doc in docs:
            model = KINDS[doc["kind"]].model_validate(doc)
            wire = model.spec.wire()
            again = KINDS[doc["kind"]].model_validate({**doc, "spec": wire})
            assert again.spec == model.spec
            assert again.spec.wire() == wire

    def test_every_kind_has_an_example(self) -> None:
        kinds = {d["kind"] for p in EXAMPLES for d in _docs(p)}
        assert kinds == set(KINDS)


class TestInvalidSpecs:
    @pytest.mark.parametrize(("case", "kind", "spec", "field"), INVALID, ids=[c[0] for c in INVALID])
    def test_refused_naming_the_field(self, case: str, kind: str, spec: dict[str, Any], field: str) -> None:
        with pytest.raises(ValidationError) as info:
            KINDS[kind].model_validate({"kind": kind, "metadata": {"name": "x"}, "spec": spec})
        errors = [
            (
                "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"][1:]),
                e["msg"],
            )
            for e in info.value.errors()
        ]
        # The API server writes map keys as [key]; pydantic's loc cannot tell them from fields.
        field = re.sub(r"\[([A-Za-z_][^\]]*)\]", r".\1", field)
        leaf = field.rsplit(".", 1)[-1]

        def names_field(loc: str, msg: str) -> bool:
            # On the field itself or inside it (a reserved env name errs on .name), or on a parent
            # whose cross-field rule names it in the message.
            if loc == field or loc.startswith((field + ".", field + "[")):
                return True
            return field.startswith(loc) and (leaf in msg or loc == field.rsplit(".", 1)[0])

        assert any(names_field(loc, msg) for loc, msg in errors), (case, errors)

    def test_at_least_25_cases(self) -> None:
        assert len(INVALID) >= 25


class TestHyperparameterEnv:
    @pytest.mark.parametrize(
        ("name", "env"),
        [("lr", "HP_LR"), ("batch_size", "HP_BATCH_SIZE"), ("batch-size", "HP_BATCH_SIZE"),
         ("model.dropout", "HP_MODEL_DROPOUT"), ("Hidden2", "HP_HIDDEN2")],
    )
    def test_names(self, name: str, env: str) -> None:
        assert hp_env_name(name) == env

    @pytest.mark.parametrize(
        ("value", "text"),
        [(0.01, "0.01"), (10, "10"), (True, "true"), ("adam", "adam"), ([64, 32], "[64,32]"),
         ({"a": 1}, '{"a":1}')],
    )
    def test_values(self, value: Any, text: str) -> None:
        assert hp_env_value(value) == text


class TestCrds:
    def test_checked_in_crds_are_current(self) -> None:
        for name, text in crdgen.files().items():
            path = ROOT / "crds" / name
            assert path.exists(), f"{path} missing: run `make crds`"
            assert path.read_text() == text, f"{path} is stale: run `make crds`"

    def test_every_field_has_a_description(self) -> None:
        missing: list[str] = []

        def walk(node: dict[str, Any], path: str) -> None:
            for key, sub in node.get("properties", {}).items():
                if "description" not in sub and key not in ("apiVersion", "kind", "metadata"):
                    missing.append(f"{path}.{key}")
                walk(sub, f"{path}.{key}")
            if isinstance(node.get("items"), dict):
                walk(node["items"], path + "[]")
            if isinstance(node.get("additionalProperties"), dict):
                walk(node["additionalProperties"], path + "{}")

        for kind in crdgen._KINDS:
            schema = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            walk(schema["properties"]["spec"], kind["kind"] + ".spec")
        assert missing == []


class TestObjectNames:
    @pytest.mark.parametrize(("case", "kind", "name"), INVALID_NAMES, ids=[c[0] for c in INVALID_NAMES])
    def test_refused_naming_metadata_name(self, case: str, kind: str, name: str) -> None:
        spec = BASE[kind]
        with pytest.raises(ValidationError, match=r"metadata\.name"):
            KINDS[kind].model_validate({"kind": kind, "metadata": {"name": name}, "spec": spec})

    @pytest.mark.parametrize("kind", list(KINDS))
    def test_longest_valid_name_passes(self, kind: str) -> None:
        name = "a" * KINDS[kind].NAME_MAX
        KINDS[kind].model_validate({"kind": kind, "metadata": {"name": name}, "spec": BASE[kind]})


class TestQuantities:
    @pytest.mark.parametrize("text", ["0", "1", "500m", "1.5", ".5", "2Gi", "1e3", "+1", "64Mi"])
    def test_accepted(self, text: str) -> None:
        KINDS["TrainingJob"].model_validate(
            {"metadata": {"name": "x"}, "spec": {**BASE["TrainingJob"], "resources": {"cpu": text}}}
        )

    @pytest.mark.parametrize("text", ["-1", "-0.5", "1.2.3", "1Gb", "", "1 Gi", "e3", "1Ki5"])
    def test_refused(self, text: str) -> None:
        with pytest.raises(ValidationError, match="resources"):
            KINDS["TrainingJob"].model_validate(
                {"metadata": {"name": "x"},
                 "spec": {**BASE["TrainingJob"], "resources": {"cpu": text}}}
            )
