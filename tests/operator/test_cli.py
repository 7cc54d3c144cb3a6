"""The command line's offline commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from avr_operator.api.crd import crd_yaml
from avr_operator.cli import main


def test_crd_prints_the_generated_definition(capsys: pytest.CaptureFixture[str]) -> None:
    main(["crd"])
    assert capsys.readouterr().out == crd_yaml()


def test_crd_writes_a_file(tmp_path: Path) -> None:
    out = tmp_path / "crd.yaml"
    main(["crd", "-o", str(out)])
    assert yaml.safe_load(out.read_text())["kind"] == "CustomResourceDefinition"


def test_render_prints_every_manifest(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["render", "-f", str(root / "examples" / "asr-llm-tts-local.yaml"), "--namespace", "voice"])
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = [d["kind"] for d in docs]
    assert (
        kinds.count("Deployment") == 4 and kinds.count("Service") == 5 and kinds.count("ConfigMap") == 4
    )  # + the core peers
    assert {d["metadata"]["namespace"] for d in docs} == {"voice"}


def test_render_refuses_an_invalid_resource(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: avr.agentvoiceresponse.com/v1alpha1\nkind: AVRDeployment\nmetadata: {name: x}\n"
        "spec: {core: {image: i}, providers: {}}\n"
    )
    with pytest.raises(SystemExit, match=r"either providers\.sts"):
        main(["render", "-f", str(bad)])


def test_render_needs_an_avrdeployment(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(SystemExit, match="no AVRDeployment"):
        main(["render", "-f", str(other)])
