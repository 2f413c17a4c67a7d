"""The model card and the heatmap: metadata the Hub and PEFT parse, a body that tells the truth about the merge."""

from __future__ import annotations

import copy
import io
import re

import pytest
from huggingface_hub import ModelCard

import hubmerge
from hubmerge.card import build_card, card_text
from hubmerge.errors import InvalidArgumentError
from hubmerge.figures import render_heatmap
from tests.factory import LLAMA_ID, make_adapter

SHA_A = "0123456789abcdef0123456789abcdef01234567"
SHA_B = "fedcba9876543210fedcba9876543210fedcba98"
REPO_ID = "alice/a-plus-b"
COMMAND = "hubmerge alice/a bob/adapters/b@v1 --weights 1,0.5 --push-to-hub alice/a-plus-b"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def local_report(tmp_path_factory):
    """A real report of hubmerge.merge on two tiny Llama adapters, as a local-only run makes it."""
    root = tmp_path_factory.mktemp("card")
    a = make_adapter(root / "a", seed=1)
    b = make_adapter(root / "b", seed=2, r=2, lora_alpha=4)
    return hubmerge.merge([a, b], weights=[1.0, 0.5]).report.to_dict()


@pytest.fixture
def report(local_report):
    """The same report with the fields the Hub step adds."""
    report = copy.deepcopy(local_report)
    report["base_model"]["canonical"] = LLAMA_ID
    report["sources"][0].update(
        repo_id="alice/a", subfolder=None, revision=None, commit_sha=SHA_A, license="apache-2.0", datasets=["gsm8k"]
    )
    report["sources"][1].update(
        repo_id="bob/adapters",
        subfolder="b",
        revision="v1",
        commit_sha=SHA_B,
        license="apache-2.0",
        datasets=["openai/openmath", "gsm8k"],
    )
    return report


def reparse(card: ModelCard) -> ModelCard:
    """What the Hub sees: the README text parsed again from scratch."""
    return ModelCard(str(card))


def test_metadata_round_trips_for_the_hub_and_peft(report):
    card = reparse(build_card(report, repo_id=REPO_ID, command=COMMAND))
    data = card.data.to_dict()
    assert data["library_name"] == "peft"
    assert data["base_model"] == LLAMA_ID
    assert data["base_model_relation"] == "adapter"
    assert sorted(data["tags"]) == ["hubmerge", "lora", "merge", "peft"]
    assert data["license"] == "apache-2.0"
    assert data["datasets"] == ["gsm8k", "openai/openmath"]
    assert card.text.lstrip().startswith("# a-plus-b\n")


def test_the_written_readme_is_the_model_cards_text(report):
    # save_pretrained writes card_text (no ModelCard import); a push and the Space use build_card: one text.
    for heatmap in ("similarity.png", None):
        text = card_text(report, repo_id=REPO_ID, command=COMMAND, heatmap_path=heatmap)
        card = build_card(report, repo_id=REPO_ID, command=COMMAND, heatmap_path=heatmap)
        assert str(card) == text
        assert ModelCard(text).data.to_dict() == card.data.to_dict()


def test_canonical_base_model_wins_over_the_name_in_the_adapter_config(report):
    report["base_model"]["canonical"] = "test-org/Tiny-Llama-Canonical"
    card = reparse(build_card(report, repo_id=REPO_ID, command=COMMAND))
    assert card.data.base_model == "test-org/Tiny-Llama-Canonical"
    assert 'AutoModelForCausalLM.from_pretrained("test-org/Tiny-Llama-Canonical")' in card.text


@pytest.mark.parametrize("name", [None, "/models/llama", "./llama", "~/llama", "C:\\models\\llama", "a/b/c"])
def test_base_model_is_left_out_unless_it_is_a_hub_id(report, name):
    report["base_model"].update(canonical=None, name=name)
    card = reparse(build_card(report, repo_id=REPO_ID, command=COMMAND))
    data = card.data.to_dict()
    assert "base_model" not in data
    assert "base_model_relation" not in data
    assert 'from_pretrained("BASE_MODEL")' in card.text


def test_different_licences_leave_license_unset_with_a_warning(report):
    report["sources"][1]["license"] = "mit"
    card = reparse(build_card(report, repo_id=REPO_ID, command=COMMAND))
    assert "license" not in card.data.to_dict()
    assert "the sources have different licences: a (apache-2.0), b (mit); check that you may combine them" in card.text


def test_unknown_licence_leaves_license_unset_with_a_warning(report):
    report["sources"][1]["license"] = None
    card = reparse(build_card(report, repo_id=REPO_ID, command=COMMAND))
    assert "license" not in card.data.to_dict()
    assert "the licence of b is unknown" in card.text
    assert "different licences" not in card.text


def test_custom_licences_are_not_inherited(report):
    for source in report["sources"]:
        source["license"] = "other"
    card = reparse(build_card(report, repo_id=REPO_ID, command=COMMAND))
    assert "license" not in card.data.to_dict()
    assert "a has a custom licence" in card.text and "b has a custom licence" in card.text


def test_sources_table_pins_every_commit_and_links_it(report):
    text = build_card(report, repo_id=REPO_ID, command=COMMAND).text
    assert f"[`{SHA_A[:7]}`](https://huggingface.co/alice/a/tree/{SHA_A})" in text
    assert f"[`{SHA_B[:7]}`](https://huggingface.co/bob/adapters/tree/{SHA_B})" in text
    assert "[alice/a](https://huggingface.co/alice/a)" in text
    assert f"[bob/adapters/b](https://huggingface.co/bob/adapters/tree/{SHA_B}/b)" in text
    # rank, alpha and weight of each source, as make_adapter and merge() set them
    assert re.search(r"^\| a \| .* \| 4 \| 8 \| 1 \|$", text, re.M)
    assert re.search(r"^\| b \| .* \| 2 \| 4 \| 0\.5 \|$", text, re.M)


def test_local_only_report_renders(local_report):
    text = build_card(local_report, repo_id=REPO_ID, command="hubmerge ./a ./b").text
    for source in local_report["sources"]:
        # a local folder by its name and the sha256 of its two files, never its path
        digests = source["files_sha256"]
        pinned = ", ".join(f"{name} `{digest[:12]}`" for name, digest in sorted(digests.items()))
        assert source["source"] == source["name"] and set(digests) == {
            "adapter_config.json",
            "adapter_model.safetensors",
        }
        assert f"| {source['name']} | `{source['source']}` | local folder (sha256: {pinned}) |" in text
    assert "the licence of a is unknown" in text and "the licence of b is unknown" in text
    assert "license" not in reparse(build_card(local_report, repo_id=REPO_ID, command="x")).data.to_dict()


def test_rms_matrix_is_tabled_with_three_decimals(report):
    rms = report["similarity"]["rms_cosine"]
    report["similarity"]["interference_ratio"] = 1.23456
    text = build_card(report, repo_id=REPO_ID, command=COMMAND).text
    assert "| | a | b |" in text
    assert f"| **a** | 1.000 | {rms[0][1]:.3f} |" in text
    assert f"| **b** | {rms[1][0]:.3f} | 1.000 |" in text
    assert "**1.235** (1: orthogonal, > 1: the updates reinforce each other, < 1: they cancel)" in text
    assert "https://arxiv.org/abs/2508.11985" in text


def test_missing_similarities_show_a_dash(report):
    report["similarity"]["rms_cosine"][0][1] = report["similarity"]["rms_cosine"][1][0] = None
    report["similarity"]["interference_ratio"] = None
    text = build_card(report, repo_id=REPO_ID, command=COMMAND).text
    assert "| **a** | 1.000 | — |" in text
    assert "‖ΣΔW‖²/Σ‖ΔW‖²: **—**" in text


def test_warnings_are_listed_in_words(report):
    report["warnings"] = [
        {"code": "high_rms_cosine", "message": "a and b make overlapping updates (RMS cosine 0.3 ≥ 0.1)"},
        {"code": "mixed_dtypes", "message": "the adapters have different dtypes"},
    ]
    text = build_card(report, repo_id=REPO_ID, command=COMMAND).text
    assert "- a and b make overlapping updates (RMS cosine 0.3 ≥ 0.1)\n- the adapters have different dtypes" in text
    assert "No interference warnings." not in text
    report["warnings"] = []
    assert "No interference warnings." in build_card(report, repo_id=REPO_ID, command=COMMAND).text


def test_heatmap_is_linked_only_when_asked(report):
    assert "](similarity.png)" in build_card(report, repo_id=REPO_ID, command=COMMAND).text
    assert "![" not in build_card(report, repo_id=REPO_ID, command=COMMAND, heatmap_path=None).text


def test_method_says_exact_and_gives_the_output_rank(report):
    text = build_card(report, repo_id=REPO_ID, command=COMMAND).text
    assert "exact: the merged delta equals Σ wᵢ·sᵢ·Bᵢ·Aᵢ; rank concatenation" in text
    assert f"- output: rank {4 + 2}, {report['output']['num_modules']} modules, float32" in text


def test_usage_snippet_is_valid_python_loading_the_merge_on_the_base(report):
    text = build_card(report, repo_id=REPO_ID, command=COMMAND).text
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    compile(snippet, "<card usage>", "exec")
    assert f'AutoModelForCausalLM.from_pretrained("{LLAMA_ID}")' in snippet
    assert f'PeftModel.from_pretrained(model, "{REPO_ID}")' in snippet


def test_command_is_shown_verbatim_with_the_recipe(report):
    command = "hubmerge 'alice/a' ./b --weights=-1,1 -o `pwd`/out"
    text = build_card(report, repo_id=REPO_ID, command=command).text
    assert f"```bash\n{command}\n```" in text
    assert "hubmerge_recipe.json" in text
    odd = "hubmerge a b -o ```"  # a fence must be longer than any backtick run inside, or the block ends early
    assert f"````bash\n{odd}\n````" in build_card(report, repo_id=REPO_ID, command=odd).text


def test_no_token_reaches_the_card(report, monkeypatch):
    secret = "hf_envSECRETmarker0123456789abcdefXYZ"
    monkeypatch.setenv("HF_TOKEN", secret)
    typed = "hf_cliSECRETmarker0123456789abcdefXYZ"
    card = build_card(report, repo_id=REPO_ID, command=f"hubmerge a b --token {typed} --push-to-hub x/y")
    assert secret not in str(card) and typed not in str(card)
    assert "--token *** --push-to-hub x/y" in str(card)


# --- the heatmap -------------------------------------------------------------------------------------------------


def decode(png: bytes):
    from matplotlib.image import imread

    assert png.startswith(PNG_SIGNATURE)
    return imread(io.BytesIO(png), format="png")


@pytest.mark.parametrize("n", [1, 2, 5])
def test_heatmap_is_a_png_of_fixed_size(n):
    matrix = [[1.0 if i == j else 0.1 * (i + j) % 1 for j in range(n)] for i in range(n)]
    image = decode(render_heatmap({"adapters": [f"adapter-{i}" for i in range(n)], "rms_cosine": matrix}))
    assert image.shape == (600, 700, 4)


def test_heatmap_of_a_real_report_handles_missing_values(report):
    sim = report["similarity"]
    assert decode(render_heatmap(sim)).shape == (600, 700, 4)
    sim["rms_cosine"][0][1] = sim["rms_cosine"][1][0] = None
    assert decode(render_heatmap(sim)).shape == (600, 700, 4)


def test_heatmap_shows_the_values_and_is_deterministic():
    names = ["a", "b"]
    low = render_heatmap({"adapters": names, "rms_cosine": [[0.0, 0.0], [0.0, 0.0]]})
    high = render_heatmap({"adapters": names, "rms_cosine": [[1.0, 1.0], [1.0, 1.0]]})
    assert low != high
    assert low == render_heatmap({"adapters": names, "rms_cosine": [[0.0, 0.0], [0.0, 0.0]]})
    # The centre of the matrix is coloured by the value: dark at 0, bright at 1 on the fixed 0..1 scale.
    assert decode(low)[300, 310, :3].mean() < decode(high)[300, 310, :3].mean()


def test_heatmap_handles_twenty_adapters_with_long_names():
    n = 20
    names = [f"a-rather-long-adapter-name-{i}" for i in range(n)]
    matrix = [[None if (i + j) % 7 == 0 else ((i * j) % 10) / 10 for j in range(n)] for i in range(n)]
    assert decode(render_heatmap({"adapters": names, "rms_cosine": matrix})).shape == (600, 700, 4)


@pytest.mark.parametrize(
    "similarity",
    [{"adapters": [], "rms_cosine": []}, {"adapters": ["a", "b"], "rms_cosine": [[1.0, 0.1]]}, {}],
)
def test_heatmap_refuses_a_matrix_that_does_not_fit_the_names(similarity):
    with pytest.raises(InvalidArgumentError):
        render_heatmap(similarity)
