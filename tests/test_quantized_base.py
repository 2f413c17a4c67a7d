"""QLoRA adapters name a quantized mirror as their base: resolved through the Hub's card metadata to the root.

The local Hub server holds a root model, a bitsandbytes mirror and a GPTQ mirror of it (cards with
``base_model`` + ``base_model_relation: quantized``, configs with a ``quantization_config``), a mirror
whose card gives no relation (the Hub infers ``quantized`` from the config), and a fine-tune of the root,
which has other weights and must stay a different base.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from huggingface_hub import constants

import hubmerge
from hubmerge.card import build_card
from tests.conftest import TOKENS
from tests.factory import make_adapter

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}


def _card(**meta) -> bytes:
    lines = ["---"]
    for key, value in meta.items():
        lines += [f"{key}:", *(f"- {v}" for v in value)] if isinstance(value, list) else [f"{key}: {value}"]
    return ("\n".join([*lines, "---", "", "# a model", ""])).encode()


@pytest.fixture
def bases(hub) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    names = {k: f"alice/{k}-{tag}" for k in ("root", "bnb", "gptq", "implicit", "finetune", "gptq-of-bnb")}
    quant = {"bnb": {"quant_method": "bitsandbytes", "load_in_4bit": True}, "gptq": {"quant_method": "gptq", "bits": 4}}

    def mirror(card: bytes, method: str) -> tuple[bytes, dict]:
        return card, {**CONFIG, "quantization_config": quant[method]}

    repos = {
        "root": (None, CONFIG),
        "bnb": mirror(_card(base_model=names["root"], base_model_relation="quantized"), "bnb"),
        "gptq": mirror(_card(base_model=[names["root"]], base_model_relation="quantized"), "gptq"),
        "implicit": mirror(_card(base_model=names["root"]), "gptq"),
        "finetune": (_card(base_model=names["root"], base_model_relation="finetune"), CONFIG),
        "gptq-of-bnb": mirror(_card(base_model=names["bnb"], base_model_relation="quantized"), "gptq"),
    }
    for key, (card, config) in repos.items():
        hub.create_repo(names[key], owner_token=TOKENS["alice"])
        files = {"config.json": json.dumps(config).encode()}
        if card is not None:
            files["README.md"] = card
        hub.commit_files(names[key], files)
    return names


def _adapter(tmp_path: Path, name: str, base: str, seed: int) -> Path:
    directory = make_adapter(tmp_path / name, seed=seed)
    config = json.loads((directory / "adapter_config.json").read_text())
    (directory / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    return directory


@pytest.mark.parametrize("mirror", ["bnb", "gptq", "implicit", "gptq-of-bnb"])
def test_adapters_on_a_quantized_mirror_and_on_its_root_merge(tmp_path, bases, mirror):
    root = _adapter(tmp_path, "on-root", bases["root"], 1)
    qlora = _adapter(tmp_path, "qlora", bases[mirror], 2)
    result = hubmerge.merge([root, qlora])
    report = result.report.to_dict()
    assert report["base_model"]["resolved"] is True and report["base_model"]["canonical"] == bases["root"]
    notes = [w["message"] for w in report["warnings"] if w["code"] == "quantized_base"]
    assert len(notes) == 1 and bases[mirror] in notes[0] and bases["root"] in notes[0]
    assert notes[0].startswith(f"{qlora.name}: ") and str(qlora) not in notes[0], "by its name: the card is public"
    method = {"bnb": "bitsandbytes", "gptq-of-bnb": "gptq"}.get(mirror, "gptq")
    assert method in notes[0]
    card = build_card(report, repo_id="alice/merged", command="hubmerge on-root qlora")
    assert bases[mirror] in str(card) and "quantized mirror" in str(card)
    assert card.data.base_model == bases["root"]
    # the mirror first: the merge is still compared, and listed, as the root
    assert hubmerge.merge([qlora, root]).report.to_dict()["base_model"]["canonical"] == bases["root"]


def test_a_fine_tune_is_not_its_base(tmp_path, bases):
    root = _adapter(tmp_path, "on-root", bases["root"], 1)
    other = _adapter(tmp_path, "on-finetune", bases["finetune"], 2)
    with pytest.raises(hubmerge.IncompatibleAdaptersError, match="differs"):
        hubmerge.merge([root, other], report_only=True)


def test_offline_the_base_is_compared_by_name_and_said_unresolved(tmp_path, bases, monkeypatch):
    root = _adapter(tmp_path, "on-root", bases["root"], 1)
    qlora = _adapter(tmp_path, "qlora", bases["bnb"], 2)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hubmerge.IncompatibleAdaptersError, match="not resolved on the Hub"):
        hubmerge.merge([root, qlora], report_only=True)
