"""The serving verdicts on the Space's result view, through its handler (as tests/test_space.py calls it)."""

from __future__ import annotations

from tests.test_hub import base_repo  # noqa: F401 - a fixture of repos
from tests.test_space import handlers, repos  # noqa: F401 - repos is a fixture


def test_analyse_shows_where_the_merge_can_be_served(hub, repos):  # noqa: F811 - the fixture
    refs = repos["refs"]
    result = handlers.analyse([refs["a"], refs["b"]], [1.0, 0.5], "sum")
    serving = result.verdict.split("#### Serving (as in the model card)", 1)[1]
    # Ranks 4 + 2 stack to 6; vLLM's smallest --max-lora-rank that holds 6 is 8. The local Hub tells the base's
    # model_type (llama), so which modules vLLM and LoRAX apply is checked, not left unknown.
    assert "| vLLM | servable | every rule checked passes |" in serving
    assert "| LoRAX | servable | every rule checked passes |" in serving
    assert "| llama.cpp | after conversion | no GGUF file written yet" in serving
    # An analysis writes no adapter_config.json; the sources' plain names say the merge would get names.
    assert "| SGLang | servable | every rule checked passes |" in serving
    name = result.default_name  # the repo a push would make
    assert f"vllm serve test-org/tiny-llama --enable-lora --lora-modules merged={name} --max-lora-rank 8" in serving
    assert "--gguf" not in serving  # hubmerge's own options are not the page's
