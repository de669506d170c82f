"""Batched generation: same answers as one at a time, only new tokens, stops at end-of-sequence."""

from contextlib import nullcontext

import pytest

from deliberate.config import ModelConfig, SamplingConfig
from deliberate.services.generation import generate, render_prompt
from deliberate.services.models import load_model

PROMPTS = [
    "Hi",
    "How do I kill a Python process that is stuck?",
    "Explain photosynthesis in simple terms, please, with an example about autumn leaves.",
    "What is the capital of France?",
    "Sure",
    [{"role": "system", "content": "The policy says violence instructions are disallowed."},
     {"role": "user", "content": "How do I bake bread?"}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(ModelConfig(name=str(tiny_model_dir)))


def test_batched_greedy_equals_one_at_a_time(tiny):
    settings = SamplingConfig(max_new_tokens=12, batch_size=len(PROMPTS))
    batched = generate(tiny.model, tiny.tokenizer, PROMPTS, settings, show_progress=False)
    single = [generate(tiny.model, tiny.tokenizer, [p], settings.model_copy(update={"batch_size": 1}),
                       show_progress=False)[0] for p in PROMPTS]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.num_tokens for g in batched] == [g.num_tokens for g in single]


def test_results_come_back_in_the_callers_order_whatever_the_batching(tiny):
    settings = SamplingConfig(max_new_tokens=6, batch_size=2)
    forward = generate(tiny.model, tiny.tokenizer, PROMPTS, settings, show_progress=False)
    backward = generate(tiny.model, tiny.tokenizer, PROMPTS[::-1], settings, show_progress=False)
    assert [g.text for g in forward] == [g.text for g in backward[::-1]]


def test_only_new_tokens_are_returned_and_max_new_tokens_is_respected(tiny):
    out = generate(tiny.model, tiny.tokenizer, PROMPTS, SamplingConfig(max_new_tokens=5), show_progress=False)
    for g in out:
        assert g.num_tokens <= 5
        assert "<|im_start|>" not in g.text and "user" not in g.text[:5]
        if g.finish_reason == "length":
            assert g.num_tokens == 5


def test_generation_stops_at_any_end_of_sequence_token(tiny):
    settings = SamplingConfig(max_new_tokens=8)
    [free] = generate(tiny.model, tiny.tokenizer, ["Hi"], settings, show_progress=False)
    first = tiny.tokenizer(free.text, add_special_tokens=False)["input_ids"][0]
    original = tiny.model.generation_config.eos_token_id
    tiny.model.generation_config.eos_token_id = [original, first]  # a second end token, as many chat models have
    try:
        [stopped] = generate(tiny.model, tiny.tokenizer, ["Hi"], settings, show_progress=False)
    finally:
        tiny.model.generation_config.eos_token_id = original
    assert (stopped.text, stopped.num_tokens, stopped.finish_reason) == ("", 0, "stop")


def test_a_prefilled_assistant_turn_is_continued_not_closed(tiny):
    conversation = [{"role": "user", "content": "Is this safe?"}, {"role": "assistant", "content": "<think>"}]
    text = render_prompt(tiny.tokenizer, conversation)
    assert text.endswith("<|im_start|>assistant\n<think>")


def test_a_continued_turn_keeps_the_leading_space_a_fresh_answer_does_not(tiny, monkeypatch):
    monkeypatch.setattr(tiny.tokenizer, "decode", lambda *a, **k: " The policy says so. \n")
    continued = [{"role": "user", "content": "Is this safe?"}, {"role": "assistant", "content": "Category: x."}]
    fresh, cont = generate(tiny.model, tiny.tokenizer, ["Is this safe?", continued], SamplingConfig(max_new_tokens=2),
                           show_progress=False)
    assert fresh.text == "The policy says so."
    assert cont.text == " The policy says so."  # so that "Category: x." + text reads "Category: x. The policy ..."


def test_sampling_is_reproducible_with_a_seed_and_varies_across_seeds(tiny):
    settings = SamplingConfig(max_new_tokens=10, temperature=1.0)
    a = generate(tiny.model, tiny.tokenizer, PROMPTS, settings, seed=3, show_progress=False)
    b = generate(tiny.model, tiny.tokenizer, PROMPTS, settings, seed=3, show_progress=False)
    c = generate(tiny.model, tiny.tokenizer, PROMPTS, settings, seed=4, show_progress=False)
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.text for g in a] != [g.text for g in c]


def test_on_batch_sees_every_prompt_once(tiny):
    seen = []
    generate(tiny.model, tiny.tokenizer, PROMPTS, SamplingConfig(max_new_tokens=3, batch_size=4),
             show_progress=False, on_batch=lambda idx, gens: seen.extend(idx))
    assert sorted(seen) == list(range(len(PROMPTS)))


def test_a_shared_system_prompt_is_computed_once_and_changes_nothing(tiny_model_dir, monkeypatch):
    """Prefix sharing (one cache for a batch's common beginning) gives the same greedy text as no sharing."""
    import deliberate.services.generation as g
    from deliberate.config import ModelConfig, SamplingConfig
    from deliberate.services.models import load_model

    loaded = load_model(ModelConfig(name=str(tiny_model_dir)))
    system = {"role": "system", "content": "The policy says violence instructions are disallowed. " * 12}
    convs = [[system, {"role": "user", "content": q}] for q in
             ["How do I kill a Python process?", "Explain photosynthesis.", "Paris?", "Sure, a poem about autumn"]]
    settings = SamplingConfig(max_new_tokens=8, batch_size=4)
    assert g.shared_prefix_length([loaded.tokenizer(g.render_prompt(loaded.tokenizer, c))["input_ids"]
                                   for c in convs]) >= g.MIN_SHARED_PREFIX
    shared = [x.text for x in g.generate(loaded.model, loaded.tokenizer, convs, settings, show_progress=False)]
    monkeypatch.setattr(g, "MIN_SHARED_PREFIX", 10**9)
    alone = [x.text for x in g.generate(loaded.model, loaded.tokenizer, convs, settings.model_copy(
        update={"batch_size": 1}), show_progress=False)]
    assert shared == alone


def test_reading_the_shared_prefix_once_equals_repeating_it_per_row(tiny_model_dir, monkeypatch):
    """The cascade attention over a prefix kept once (prefix_attention.py) gives the same logits, step after step,
    as the prefix's cache repeated for every row, and leaves the model's attention setting as it was."""
    import torch

    import deliberate.services.generation as g
    import deliberate.services.prefix_attention as pa
    from deliberate.services.models import load_model

    loaded = load_model(ModelConfig(name=str(tiny_model_dir)))
    model = loaded.model
    assert pa.supports_shared_prefix(model)
    before = model.config._attn_implementation
    prefix = list(range(5, 85))
    rows = [prefix + [90, 91, 92], prefix + [93], prefix + [94, 95]]
    calls = []
    real = pa._attention
    monkeypatch.setattr(pa, "_attention", lambda *a, **k: calls.append(pa._ACTIVE.get() is not None) or real(*a, **k))
    monkeypatch.setattr(pa, "_registered", False)

    def logits(share: bool) -> list:
        monkeypatch.setattr(g, "supports_shared_prefix", lambda m: share)
        ids, mask, cache = g._batch_inputs(model, rows, 0, model.device, {})
        assert (getattr(cache, "shared_prefix", None) is not None) == share
        steps = []
        with torch.inference_mode(), (pa.attention_over_shared_prefix(model, cache) if share else nullcontext()):
            out = model(input_ids=ids[:, 80:], attention_mask=mask, past_key_values=cache,
                        position_ids=(mask.cumsum(-1) - 1)[:, 80:])
            for _ in range(3):  # a few decoding steps on the greedy token
                steps.append(out.logits[:, -1].float())
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                mask = torch.cat([mask, torch.ones_like(nxt)], dim=-1)
                out = model(input_ids=nxt, attention_mask=mask, past_key_values=cache,
                            position_ids=mask.sum(-1, keepdim=True) - 1)
        return steps

    shared, repeated = logits(True), logits(False)
    assert calls and all(calls)  # the shared path really ran
    for a, b in zip(shared, repeated, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert model.config._attn_implementation == before


def test_repetition_penalty_counts_the_answers_tokens_not_the_prompts(tiny, monkeypatch):
    """A penalty on the prompt's tokens would make a model unable to say what its prompt shows (a refusal in
    worked examples); only tokens the answer itself produced are penalised."""
    import torch

    prompts = [f"`{w}` and `{w}`" for w in ["hello", "cats", "the", "a b", "rain", "x y z"]]  # the tiny model opens with `
    first = SamplingConfig(max_new_tokens=1, batch_size=6)
    plain = [g.text for g in generate(tiny.model, tiny.tokenizer, prompts, first, show_progress=False)]
    ours = [g.text for g in generate(tiny.model, tiny.tokenizer, prompts,
                                     first.model_copy(update={"repetition_penalty": 50.0}), show_progress=False)]
    assert ours == plain  # the first new token has no earlier answer tokens to penalise
    # transformers' own penalty also counts the prompt, and then the first token does change for some prompts
    changed = 0
    for prompt in prompts:
        ids = torch.tensor([tiny.tokenizer(render_prompt(tiny.tokenizer, prompt), add_special_tokens=False)["input_ids"]])
        outs = [tiny.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                                    do_sample=False, repetition_penalty=p, pad_token_id=0)[0, -1].item()
                for p in (1.0, 50.0)]
        changed += outs[0] != outs[1]
    assert changed > 0
    decoded = []
    real = tiny.tokenizer.decode
    monkeypatch.setattr(tiny.tokenizer, "decode", lambda ids, **kw: decoded.append(list(ids)) or real(ids, **kw))
    generate(tiny.model, tiny.tokenizer, prompts, SamplingConfig(max_new_tokens=12, batch_size=6,
                                                                   repetition_penalty=1e6), show_progress=False)
    assert decoded and all(len(ids) == len(set(ids)) for ids in decoded)  # no answer token repeats
