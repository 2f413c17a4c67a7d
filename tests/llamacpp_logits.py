"""Run by llama.cpp's own Python (tests/llamacpp.py builds it): logits of a GGUF model with LoRA adapters applied.

usage: python llamacpp_logits.py MODEL.gguf OUT.npy PROMPT [ADAPTER.gguf ...]
       (PROMPT "ids:3,4,5" gives the token ids directly)

Every adapter is loaded with llama_adapter_lora_init and applied together at scale 1 with
llama_set_adapters_lora (llama.cpp applies several LoRAs at once). Prints nothing on success.
"""

import ctypes
import sys

import llama_cpp
import numpy as np
from llama_cpp import Llama

model, out, prompt, *paths = sys.argv[1:]
# f32 KV cache: the default f16 cache rounds K and V, a noise floor of its own
llm = Llama(
    model_path=model, n_ctx=256, logits_all=True, verbose=False, n_threads=2, seed=0,
    type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
)  # fmt: skip
adapters = []
for path in paths:
    adapter = llama_cpp.llama_adapter_lora_init(llm._model.model, path.encode("utf-8"))
    if not adapter:
        raise SystemExit(f"llama.cpp refused the LoRA adapter {path}")
    adapters.append(adapter)
if adapters:
    array = (llama_cpp.llama_adapter_lora_p_ctypes * len(adapters))(*adapters)
    scales = (ctypes.c_float * len(adapters))(*([1.0] * len(adapters)))
    if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, array, len(adapters), scales):
        raise SystemExit("llama_set_adapters_lora failed")
if prompt.startswith("ids:"):
    tokens = [int(t) for t in prompt.removeprefix("ids:").split(",")]
else:
    tokens = llm.tokenize(prompt.encode("utf-8"))
llm.eval(tokens)
np.save(out, np.asarray(llm.scores[: len(tokens)], dtype=np.float32))
