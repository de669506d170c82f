"""`model`: the model a recipe aligns (a Hub id, a folder, an adapter, or the embedded SmolLM2), and how it answers
(`backend`: in this process with transformers or vLLM, or a model served behind an OpenAI-compatible API)."""

from __future__ import annotations

from typing import Literal

from deliberate.config.sampling import ApiConfig


class ModelConfig(ApiConfig):
    """The model. The API fields (`base_url`, `api_key_env`, retries, ...) apply to the `openai` backend."""

    DEFAULTS = {"timeout": 120.0}  # a whole answer, not a short verdict

    name: str = "smollm2"
    """A Hugging Face Hub id, a local model folder, a PEFT adapter folder, or `smollm2` (the embedded
    SmolLM2-135M-Instruct); for the `openai` backend, the name the server knows the model by (`gpt-4o-mini`, the
    model a `vllm serve` server was started with)."""
    backend: Literal["hf", "vllm", "openai"] = "hf"
    """How `answer`, `eval` and `pairs` generate with the model: `hf` (transformers, in this process), `vllm`
    (vLLM in this process: a CUDA GPU and `pip install 'deliberate[vllm]'`) or `openai` (a model served behind
    any OpenAI-compatible API: the OpenAI API, a vLLM server, ...). The API gets the prompt as chat messages with
    temperature, top_p and max_tokens, and top_k and repetition_penalty only when they are set (vLLM servers take
    them; the OpenAI API refuses them). Answers are cached per backend: switching it answers again. Training
    always loads the model with transformers, so a served model cannot be trained."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for a Hub id."""
    base: str | None = None
    """For an adapter folder: the base model to put it on, when the path recorded in the adapter has moved."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; `auto` is bfloat16 on a GPU that supports it and float32 on CPU."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda`, `cuda:1`, ..."""
    trust_remote_code: bool = False
    """Run code shipped with the model. Off unless you trust the model's authors."""
    attn_implementation: str | None = None
    """e.g. `sdpa`, `eager`, `flash_attention_2`; the transformers default when unset."""

    def loading(self) -> dict:
        """How the weights are loaded for training (what a trained model's fingerprint holds besides the weights
        themselves): not the name, which the fingerprints identify by the weights, nor how it is served."""
        return self.model_dump(include={"revision", "base", "dtype", "device", "trust_remote_code",
                                        "attn_implementation"})
