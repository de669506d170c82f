"""Shared fixtures: a tiny chat model built locally (no Hub), and offline settings for every test."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "How do I kill a Python process that is stuck?", "What is the capital of France? Paris.",
    "I'm sorry, but I can't help with that.", "Sure! Here is a short poem about autumn leaves.",
    "<think>The request is about cooking, which is safe.</think> Boil the pasta for ten minutes.",
    "Explain photosynthesis in simple terms.", "The policy says violence instructions are disallowed.",
]


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A ~100k-parameter Llama with a small byte-level BPE tokenizer and a ChatML template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>", unk_token="<unk>",
        bos_token="<|im_start|>",
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_completions(folder: Path, n: int = 8) -> Path:
    """A generate/completions.jsonl as `deliberate generate` writes it (well-formed, safe prompts)."""
    rows = [{"key": f"{i}:0:x", "id": str(i), "prompt": f"How do I bake bread number {i}?", "category": "safe",
             "expected": "comply", "sample": 0, "reasoning": "Category: safe. Baking is allowed.",
             "answer": "Mix flour, water, salt and yeast, then bake.", "malformed": None,
             "completion": "<think>\nCategory: safe. Baking is allowed.\n</think>\nMix flour, water, salt and yeast, "
                           "then bake."} for i in range(n)]
    from deliberate.services.io import write_jsonl

    return write_jsonl(folder / "generate" / "completions.jsonl", rows)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared datasets folder is missing: {SHARED}")
    return SHARED
