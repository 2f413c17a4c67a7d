"""Property-based tests: whatever bytes a stranger's adapter holds, reading it either works or raises
hubmerge's own error, quickly and without a large allocation.

Hypothesis draws random configs, random files and mutations of a real safetensors header. Each
example has a deadline (a hang fails the test), and no tensor read may be larger than the file it
came from (a header claiming a huge tensor must not make hubmerge allocate it).
"""

from __future__ import annotations

import json
import math
import struct

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from hubmerge.adapter import load_adapter
from hubmerge.config import MAX_RANK, AdapterConfig, parse_config
from hubmerge.errors import AdapterFormatError, HubmergeError

# Derandomized: CI runs the same examples every time, and a failure reproduces.
FUZZ = settings(
    max_examples=150,
    deadline=500,  # ms per example: a hang or an exponential regex fails the test
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MODULE = "model.layers.10.self_attn.q_proj"
LONG_MODULE = ".".join(["model", *(["layers", "aaaaaaaaaaaaaaaaaaaaaaaaaaaa"] * 6), "q_proj"])
KEY = f"base_model.model.{MODULE}"

_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_FIELDS = [
    "r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "fan_in_fan_out", "target_modules",
    "layers_to_transform", "modules_to_save", "use_dora", "lora_bias", "bias", "task_type", "peft_type",
    "base_model_name_or_path", "revision", "init_lora_weights",
]  # fmt: skip
# Regexes built from pieces (nested groups, alternations, repeats), plus raw text that is mostly not a regex.
_REGEX = st.one_of(
    st.recursive(
        st.sampled_from(["a", ".", "[ab]", "q", r"\.", "a*", ".*"]),
        lambda inner: st.one_of(
            st.tuples(inner, inner).map("".join),
            st.tuples(inner, inner).map(lambda t: f"({t[0]}|{t[1]})"),
            st.tuples(inner, st.sampled_from(["*", "+", "?", "{2}", "{1,3}"])).map(lambda t: f"({t[0]}){t[1]}"),
        ),
        max_leaves=6,
    ),
    st.text(alphabet="a.*+?|()[]{},0123456789\\^$_q", max_size=14),
)


@FUZZ
@given(
    config=st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=8),
    r=st.one_of(st.integers(min_value=-(2**40), max_value=2**40), _JSON),
)
def test_config_parsing_accepts_or_raises_adapter_format_error(config, r):
    config = {"r": r, **config}
    try:
        parsed = parse_config(config, where="fuzz")
    except AdapterFormatError as err:
        assert str(err).startswith("fuzz: "), "the message names the source"
        return
    assert isinstance(parsed, AdapterConfig)
    assert isinstance(parsed.r, int) and 0 < parsed.r <= MAX_RANK
    assert math.isfinite(parsed.lora_alpha)
    assert math.isfinite(parsed.scale_for(MODULE))


@FUZZ
@given(patterns=st.dictionaries(_REGEX, st.integers(min_value=1, max_value=64), min_size=1, max_size=3))
def test_accepted_rank_patterns_match_in_bounded_time(patterns):
    # A key PEFT would match with re.match: if hubmerge accepts it, matching it is fast (deadline above).
    try:
        config = parse_config({"r": 8, "rank_pattern": patterns, "alpha_pattern": patterns})
    except AdapterFormatError:
        return
    for module in (MODULE, LONG_MODULE, "a" * 200 + "!"):
        assert config.rank_for(module) >= 1
        config.scale_for(module)


@FUZZ
@given(data=st.binary(max_size=256))
def test_random_config_bytes(tmp_path_factory, data):
    directory = _adapter_dir(tmp_path_factory, _valid_safetensors())
    (directory / "adapter_config.json").write_bytes(data)
    _load_or_refuse(directory)


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_safetensors_bytes(tmp_path_factory, data):
    _load_or_refuse(_adapter_dir(tmp_path_factory, data))


@FUZZ
@given(
    length=st.one_of(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=600)),
    header=st.dictionaries(
        st.sampled_from([f"{KEY}.lora_A.weight", f"{KEY}.lora_B.weight", "__metadata__", "x"]),
        st.fixed_dictionaries(
            {},
            optional={
                "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "BOOL", "U8", "F8_E4M3", "Q4", ""]),
                "shape": st.lists(st.integers(min_value=-1, max_value=2**62), max_size=4),
                "data_offsets": st.lists(st.integers(min_value=-1, max_value=2**64), max_size=3),
            },
        ),
        max_size=3,
    ),
    tail=st.binary(max_size=256),
)
def test_forged_safetensors_headers(tmp_path_factory, length, header, tail):
    body = json.dumps(header).encode()
    _load_or_refuse(_adapter_dir(tmp_path_factory, struct.pack("<Q", length) + body + tail))


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), st.integers(0, 255)), max_size=6))
def test_mutated_real_safetensors_files(tmp_path_factory, flips):
    data = bytearray(_valid_safetensors())
    for position, value in flips:
        data[position % len(data)] = value
    _load_or_refuse(_adapter_dir(tmp_path_factory, bytes(data)))


# -- helpers -----------------------------------------------------------------------------------

_VALID: list[bytes] = []


def _valid_safetensors() -> bytes:
    if not _VALID:
        tensors = {f"{KEY}.lora_A.weight": torch.ones(4, 8), f"{KEY}.lora_B.weight": torch.ones(8, 4)}
        _VALID.append(save(tensors))
    return _VALID[0]


def _adapter_dir(tmp_path_factory, weights: bytes):
    directory = tmp_path_factory.mktemp("fuzz")
    (directory / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    (directory / "adapter_model.safetensors").write_bytes(weights)
    return directory


def _load_or_refuse(directory) -> None:
    """Load the adapter and read every tensor it indexes: success, or a HubmergeError naming the source."""
    size = (directory / "adapter_model.safetensors").stat().st_size
    try:
        adapter = load_adapter(directory, source="fuzz-source")
        for name in adapter.iter_tensor_names():
            tensor = adapter.tensor(name)
            assert tensor.numel() * tensor.element_size() <= size, "no allocation beyond the file's own bytes"
    except HubmergeError as err:
        assert "fuzz-source" in str(err) or str(directory) in str(err), err
