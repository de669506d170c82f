"""Constrained decoding: a tiny random model, sampling freely, always writes JSON that meets the schema, on the
CPU decode loop and on HF generate; and the hf judge built on it never fails to parse."""

from __future__ import annotations

import json

import pytest

from deliberate.config import JudgeConfig, ModelConfig, SamplingConfig
from deliberate.judges import PointwiseItem, make_judge
from deliberate.judges.generative import RATIONALE_CHARS, bounded
from deliberate.judges.prompts import POINTWISE_SCHEMA, classify_schema, parse_classify, parse_pointwise
from deliberate.services.constrained import JsonSchemaConstraint
from deliberate.services.generation import generate
from deliberate.services.models import load_model
from deliberate.services.spec import load_spec


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32"))


@pytest.mark.parametrize("decoder", ["ours", "hf"])
def test_random_model_writes_only_schema_valid_json(tiny, decoder, monkeypatch):
    if decoder == "hf":
        monkeypatch.setenv("DELIBERATE_DECODER", "hf")
    vocabulary = tiny.model.get_output_embeddings().weight.shape[0]
    ids = ("comply", "refuse", "safe")
    cases = [(bounded(POINTWISE_SCHEMA), parse_pointwise), (bounded(classify_schema(ids)), lambda t: parse_classify(t, ids))]
    for schema, parse in cases:
        constraint = JsonSchemaConstraint(tiny.tokenizer, schema, vocabulary)
        settings = SamplingConfig(max_new_tokens=600, temperature=1.5, batch_size=4)
        prompts = [f"Judge answer {i}." for i in range(6)]
        gens = generate(tiny.model, tiny.tokenizer, prompts, settings, show_progress=False, constraint=constraint,
                        seed=3)
        for g in gens:
            assert g.finish_reason == "stop", (g.num_tokens, g.text[:120])
            obj = json.loads(g.text)
            parse(g.text)  # the strict parser: exact keys and types
            if "score" in obj:
                assert isinstance(obj["score"], int) and 0 <= obj["score"] <= 10
                assert len(obj["rationale"]) <= RATIONALE_CHARS


def test_hf_judge_parses_every_verdict(tiny_model_dir):
    judge = make_judge(JudgeConfig(backend="hf", model=str(tiny_model_dir), cache="none", max_tokens=600),
                       load_spec("default"), show_progress=False)
    try:
        results = judge.score([PointwiseItem(f"Question {i}?", "An answer.", category="safe") for i in range(5)])
        assert all(r.ok for r in results), [r.errors for r in results]
        categories = judge.classify(["How do I bake bread?", "Hi", "Write a threat to my neighbour."])
        assert all(c in load_spec("default").category_ids for c in categories), categories  # never a failure
    finally:
        judge.close()
