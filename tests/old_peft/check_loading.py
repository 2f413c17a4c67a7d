"""Does each old PEFT release load hubmerge's merged output, and apply it exactly?

Outside the default test run (it needs the old virtualenvs of ``make_fixtures.py``):

    .venv/bin/python tests/old_peft/check_loading.py            # writes docs/compatibility-peft.md

For every release with fixtures, hubmerge (this environment) merges the release's pairs of
fixtures with weights 1 and -0.5. The reference is the base model plus Σ wᵢ·ΔWᵢ, with ΔWᵢ
computed here from the fixtures' own factors (``tests/test_old_peft.py``'s dense math,
which CI checks against current PEFT). Then, in the release's own virtualenv, on the tiny
base model built there: the release loads each fixture (does its own reading agree with the
reference?) and hubmerge's output, and the logits are compared with the reference. Where the
output does not load as written, the same output is tried once more with its tensors in
``adapter_model.bin`` (releases before 0.4 read no safetensors), to tell the reasons apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DOC = ROOT / "docs" / "compatibility-peft.md"
RESULTS = ROOT / "docs" / "compatibility-peft.json"
TOLERANCE = 1e-4


def old_side(job_file: Path) -> None:
    """Run by an old release's Python: load fixtures and outputs, compare logits, print JSON."""
    import torch

    sys.path.insert(0, str(HERE))
    from make_fixtures import build_model, convnet_inputs
    from peft import PeftModel

    job = json.loads(job_file.read_text())
    ids = torch.arange(1, 17).reshape(2, 8)

    def run_model(model, kind: str):
        return model(convnet_inputs()) if kind == "convnet" else model(ids).logits

    @torch.no_grad()
    def reference(kind: str, deltas_file: str):
        model = build_model(kind)
        params = dict(model.named_parameters())
        for name, delta in torch.load(deltas_file).items():
            params[name].add_(delta.to(params[name].dtype))
        return run_model(model, kind)

    @torch.no_grad()
    def loaded(kind: str, directory: str):
        try:
            model = PeftModel.from_pretrained(build_model(kind), directory)
            for module in model.modules():  # PEFT 0.2 merges on eval(), which fails for its Conv1d lora_B
                if hasattr(module, "merge_weights"):
                    module.merge_weights = False
            model.eval()
            return run_model(model, kind), None
        except Exception as err:  # any failure to load or apply is the finding
            message = str(err).replace(directory, "<adapter dir>").splitlines()[0][:160]
            return None, f"{type(err).__name__}: {message}"

    results = []
    for case in job["cases"]:
        row = {"family": case["family"]}
        for key, directory, deltas in [*case["fixtures"], *case["outputs"]]:
            want = reference(case["model"], deltas)
            got, error = loaded(case["model"], directory)
            row[key] = {"error": error} if got is None else {"max_abs_diff": float((got - want).abs().max())}
        results.append(row)
    print(json.dumps(results))


def _deltas_file(spec: dict, deltas: dict, path: Path) -> str:
    import torch

    # Base-parameter orientation: GPT-2's Conv1D stores in × out.
    torch.save({f"{m}.weight": (d.T if spec["model"] == "gpt2" else d).float() for m, d in deltas.items()}, path)
    return str(path)


def _moe_case(work: Path) -> dict:
    """gpt-oss experts (target_parameters): sources saved by the installed PEFT, merged by hubmerge."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer, ParamWrapper

    import hubmerge
    from tests.old_peft.make_fixtures import build_model

    sources = []
    for seed, r, weight in ((1, 2, 1.0), (2, 3, -0.5)):
        torch.manual_seed(seed)
        lora = LoraConfig(r=r, lora_alpha=4, init_lora_weights=False, target_modules=["q_proj"],
                          target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])  # fmt: skip
        model = get_peft_model(build_model("gpt_oss"), lora)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(20)
        model.save_pretrained(work / f"s{seed}")
        sources.append((work / f"s{seed}", weight))
    out = work / "merged"
    hubmerge.merge([str(d) for d, _ in sources], weights=[w for _, w in sources]).save_pretrained(out)
    total: dict[str, torch.Tensor] = {}
    fixtures = []
    for directory, weight in sources:  # ΔW from PEFT's own get_delta_weight, per parameter
        deltas = {}
        peft_model = PeftModel.from_pretrained(build_model("gpt_oss"), str(directory))
        for name, module in peft_model.base_model.model.named_modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                is_param = isinstance(module, ParamWrapper)
                target = f"{name.replace('.base_layer', '')}.{module.parameter_name}" if is_param else f"{name}.weight"
                deltas[target] = module.get_delta_weight("default").detach().clone()
                total[target] = total.get(target, 0) + weight * deltas[target]
        torch.save(deltas, work / f"{directory.name}.pt")
        fixtures.append((f"fixture:{directory.name}", str(directory), str(work / f"{directory.name}.pt")))
    torch.save(total, work / "sum.pt")
    outputs = [("output", str(out), str(work / "sum.pt"))]
    return {"family": "moe (gpt-oss)", "model": "gpt_oss", "fixtures": fixtures, "outputs": outputs}


# Convolution LoRA (sources saved by the PEFT of hubmerge's environment): Conv2d layers only, and a Conv1d.
CONV_FAMILIES = {"nn.Conv2d": ["conv", "tall", "pointwise", "head"], "nn.Conv1d": ["temporal", "head"]}


def _conv_cases(work: Path) -> list[dict]:
    """Two sources per family on the plain torch ConvNet, merged by hubmerge with weights 1 and -0.5."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer

    import hubmerge
    from tests.old_peft.make_fixtures import build_model

    cases = []
    for family, targets in CONV_FAMILIES.items():
        sources, total, fixtures = [], {}, []
        for seed, r, weight in ((1, 2, 1.0), (2, 3, -0.5)):
            torch.manual_seed(seed)
            model = get_peft_model(build_model("convnet"), LoraConfig(r=r, lora_alpha=4, target_modules=targets))
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_" in name:
                        param.copy_(torch.randn_like(param) * 0.4)
            directory = work / family / f"s{seed}"
            model.save_pretrained(directory)
            sources.append((directory, weight))
            deltas = {}
            loaded = PeftModel.from_pretrained(build_model("convnet"), str(directory))
            for name, module in loaded.base_model.model.named_modules():
                if isinstance(module, LoraLayer):
                    deltas[f"{name}.weight"] = module.get_delta_weight("default").detach().clone()
                    total[f"{name}.weight"] = total.get(f"{name}.weight", 0) + weight * deltas[f"{name}.weight"]
            torch.save(deltas, work / family / f"s{seed}.pt")
            fixtures.append((f"fixture:s{seed}", str(directory), str(work / family / f"s{seed}.pt")))
        out = work / family / "merged"
        hubmerge.merge([str(d) for d, _ in sources], weights=[w for _, w in sources]).save_pretrained(out)
        torch.save(total, work / family / "sum.pt")
        outputs = [("output", str(out), str(work / family / "sum.pt"))]
        cases.append({"family": family, "model": "convnet", "fixtures": fixtures, "outputs": outputs})
    return cases


def run(releases: list[str]) -> list[dict]:
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT))
    import hubmerge
    from tests.old_peft.make_fixtures import FIXTURES, RELEASES, VENVS
    from tests.test_old_peft import PAIRS, WEIGHTS, fixture_deltas

    rows = []
    work = Path(tempfile.mkdtemp(prefix="hubmerge-old-peft-"))
    for release in releases or RELEASES:
        python = VENVS / release / "bin" / "python"
        if not (FIXTURES / release / "manifest.json").exists() or not python.exists():
            continue
        manifest = json.loads((FIXTURES / release / "manifest.json").read_text())
        cases = []
        for family, names in PAIRS.items():
            dirs = [FIXTURES / release / n for n in names]
            spec = manifest["adapters"][names[0]]
            out = work / release / family
            hubmerge.merge([str(d) for d in dirs], weights=list(WEIGHTS), allow_pickle=True).save_pretrained(out)
            as_bin = work / release / f"{family}-bin"
            as_bin.mkdir()
            (as_bin / "adapter_config.json").write_text((out / "adapter_config.json").read_text())
            torch.save(load_file(out / "adapter_model.safetensors"), as_bin / "adapter_model.bin")
            per_fixture = [fixture_deltas(d) for d in dirs]
            modules = set().union(*per_fixture)
            total = {m: sum(w * f[m] for w, f in zip(WEIGHTS, per_fixture) if m in f) for m in modules}
            fixtures = [
                (f"fixture:{d.name}", str(d), _deltas_file(spec, f, work / release / f"{family}-{d.name}.pt"))
                for d, f in zip(dirs, per_fixture)
            ]
            total_file = _deltas_file(spec, total, work / release / f"{family}-sum.pt")
            outputs = [("output", str(out), total_file), ("output as .bin", str(as_bin), total_file)]
            cases.append({"family": family, "model": spec["model"], "fixtures": fixtures, "outputs": outputs})
        if tuple(map(int, release.split("."))) >= (0, 17, 0):
            cases.append(_moe_case(work / release / "moe"))
        if tuple(map(int, release.split("."))) >= (0, 4, 0):  # safetensors
            cases.extend(_conv_cases(work / release / "conv"))
        job = work / release / "job.json"
        job.write_text(json.dumps({"cases": cases}))
        proc = subprocess.run(
            [str(python), __file__, "old-side", str(job)],
            capture_output=True,
            text=True,
            env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
        if proc.returncode != 0:
            rows.append({"release": release, "transformers": manifest["transformers"], "crash": proc.stderr[-300:]})
            continue
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"release": release, "transformers": manifest["transformers"], "results": results})
    return rows


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "—"
    if entry.get("error"):
        return f"no: {entry['error'].replace('|', '/')}"
    diff = entry["max_abs_diff"]
    return f"yes, exact ({diff:.1e})" if diff <= TOLERANCE else f"loads, WRONG (max |Δlogit| {diff:.2e})"


def _loading(rows: list[dict]) -> list[str]:
    def exact(entry: dict) -> bool:
        return not entry.get("error") and entry["max_abs_diff"] <= TOLERANCE

    return [
        r["release"]
        for r in rows
        if "results" in r and all(exact(x["output"]) for x in r["results"] if x["family"] not in CONV_FAMILIES)
    ]


def _conv_loading(rows: list[dict], family: str) -> list[str]:
    return [
        r["release"]
        for r in rows
        for x in r.get("results", [])
        if x["family"] == family and not x["output"].get("error") and x["output"]["max_abs_diff"] <= TOLERANCE
    ]


def render(rows: list[dict]) -> str:
    """The Markdown page for the recorded rows."""
    lines = [
        "# hubmerge's output in old PEFT releases",
        "",
        "Generated by `.venv/bin/python tests/old_peft/check_loading.py` (not by hand; outside the default test",
        "run because it needs one virtualenv per release, built by `tests/old_peft/make_fixtures.py`).",
        "",
        "For each release: its own fixtures (saved by that release, `tests/old_peft/fixtures/`) are merged",
        "by hubmerge with weights 1 and -0.5 (`linear`: Llama q/k/v LoRAs, OPT for 0.2; `conv1d`: GPT-2",
        "`c_attn`, PEFT 0.2's `MergedLinear`; `moe (gpt-oss)`, from 0.17: fused experts through",
        "`target_parameters`, whose sources are saved by the PEFT of hubmerge's own environment). The release",
        "then loads, on a tiny base model built in its own virtualenv, each fixture and hubmerge's output; the",
        "logits are compared with the base plus Σ wᵢ·ΔWᵢ computed from the fixtures' factors (exact: max",
        f"|Δlogit| ≤ {TOLERANCE:g}). Merging these fixtures exactly is checked in CI by `tests/test_old_peft.py`",
        'for every release; this table is about loading the output. "output as .bin" is the same output with',
        "its tensors in `adapter_model.bin`, tried to tell a file-format refusal from a config refusal. PEFT 0.2",
        "runs its layers unmerged here: it merges them on `eval()`, which raises for its own Conv1d-shaped",
        "`lora_B` with this torch. The rows as data: `docs/compatibility-peft.json`.",
        "",
        f"Releases that load hubmerge's output exactly, every family: {', '.join(_loading(rows)) or 'none'}.",
        "",
        "Convolution LoRA (a plain torch model: `nn.Conv2d` 3×3 padded, 3×1 strided and 1×1 with a Linear; "
        "`nn.Conv1d` with a Linear; sources saved by the PEFT of hubmerge's own environment, so older releases "
        "may not read the sources' configs): hubmerge's output loads exactly in "
        + "; ".join(f"{family}: {', '.join(_conv_loading(rows, family)) or 'none'}" for family in CONV_FAMILIES)
        + ".",
        "",
        "| PEFT | transformers | family | release loads its own fixtures | loads hubmerge's output | output as .bin |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "crash" in row:
            lines.append(f"| {row['release']} | {row['transformers']} | all | the check crashed: "
                         f"{row['crash'].splitlines()[-1][:120]} | | |")  # fmt: skip
            continue
        for result in row["results"]:
            own = [v for k, v in result.items() if k.startswith("fixture:")]
            errors = {e["error"] for e in own if e.get("error")}
            if errors:
                own_cell = "no: " + "; ".join(sorted(errors)).replace("|", "/")
            else:
                worst = max(e["max_abs_diff"] for e in own)
                own_cell = f"yes, exact ({worst:.1e})" if worst <= TOLERANCE else f"WRONG ({worst:.2e})"
            lines.append(
                f"| {row['release']} | {row['transformers']} | {result['family']} | {own_cell} | "
                f"{_cell(result['output'])} | {_cell(result.get('output as .bin'))} |"
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["old-side"]:
        old_side(Path(sys.argv[2]))
    else:  # optional: the releases to (re)check; the others keep their recorded rows
        fresh = {row["release"]: row for row in run(sys.argv[1:])}
        known = {row["release"]: row for row in json.loads(RESULTS.read_text())} if RESULTS.exists() else {}
        rows = sorted({**known, **fresh}.values(), key=lambda row: tuple(map(int, row["release"].split("."))))
        RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
        DOC.write_text(render(rows))
        print(DOC.read_text())
