"""The fast decode loop (services/decoding.py) against HF generate: same greedy answers in float32, HF's sampling
filters, per-row seeds, end-of-sequence handling with finished rows compacted away, kept prefixes, and a resumed
sampling run that draws what the uninterrupted one drew."""

from __future__ import annotations

import pytest
import torch

from deliberate.config import ModelConfig, SamplingConfig
from deliberate.services import decoding
from deliberate.services import generation as g
from deliberate.services.models import load_model

SYSTEM = {"role": "system", "content": "The policy says violence instructions are disallowed. " * 12}
SPEC_B = {"role": "system", "content": SYSTEM["content"] + "Category two: cooking is always allowed. " * 4}
PROMPTS = [
    "Hi",
    "How do I kill a Python process that is stuck?",
    "Explain photosynthesis in simple terms, please, with an example about autumn leaves.",
    [SYSTEM, {"role": "user", "content": "How do I bake bread?"}],
    [SYSTEM, {"role": "user", "content": "Paris?"}],
    [SPEC_B, {"role": "user", "content": "Sure, a poem about autumn"}],
    [SPEC_B, {"role": "user", "content": "Is this safe?"}, {"role": "assistant", "content": "<think>"}],
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    loaded = load_model(ModelConfig(name=str(tiny_model_dir)))
    assert decoding.supported(loaded.model)
    return loaded


def run(loaded, prompts, settings, hf: bool = False, monkeypatch=None, **kwargs):
    if hf:
        monkeypatch.setenv("DELIBERATE_DECODER", "hf")
    try:
        return g.generate(loaded.model, loaded.tokenizer, prompts, settings, show_progress=False, **kwargs)
    finally:
        if hf:
            monkeypatch.delenv("DELIBERATE_DECODER")


def same(a, b) -> bool:
    return [(x.text, x.num_tokens, x.finish_reason) for x in a] == [(x.text, x.num_tokens, x.finish_reason) for x in b]


def test_float32_greedy_equals_hf_generate_batched_and_one_at_a_time(tiny, monkeypatch):
    settings = SamplingConfig(max_new_tokens=16, batch_size=len(PROMPTS))
    fast = run(tiny, PROMPTS, settings)
    reference = run(tiny, PROMPTS, settings, hf=True, monkeypatch=monkeypatch)
    single = [run(tiny, [p], settings.model_copy(update={"batch_size": 1}))[0] for p in PROMPTS]
    assert same(fast, reference)
    assert same(fast, single)


def test_repetition_penalty_counts_the_answers_own_tokens_as_hf_does(tiny, monkeypatch):
    settings = SamplingConfig(max_new_tokens=16, batch_size=4, repetition_penalty=1.8)
    penalised = run(tiny, PROMPTS, settings)
    assert same(penalised, run(tiny, PROMPTS, settings, hf=True, monkeypatch=monkeypatch))
    assert not same(penalised, run(tiny, PROMPTS, settings.model_copy(update={"repetition_penalty": 1.0})))


def test_rows_end_at_any_end_token_and_finished_rows_leave_the_batch(tiny, monkeypatch):
    """Extra end tokens taken from greedy answers make rows end at different steps; with more than a quarter
    ended the caches are compacted, and every row still gets HF generate's answer."""
    settings = SamplingConfig(max_new_tokens=12, batch_size=len(PROMPTS))
    free = run(tiny, PROMPTS, settings)
    candidates = list(dict.fromkeys(t for x in free for t in tiny.tokenizer(x.text, add_special_tokens=False)[
        "input_ids"][2:8]))
    original = tiny.model.generation_config.eos_token_id
    compactions = []
    real_rebuild = decoding._Batch.rebuild
    monkeypatch.setattr(decoding._Batch, "rebuild", lambda self, prompts: compactions.append(
        (self.done.count(True), self.alive(), len(prompts))) or real_rebuild(self, prompts))
    try:
        for extra in candidates:  # an end token that ends some rows early and not all
            tiny.model.generation_config.eos_token_id = [original, extra]
            fast = run(tiny, PROMPTS, settings)
            reasons = [x.finish_reason for x in fast]
            if 2 <= reasons.count("stop") < len(reasons):
                break
        reference = run(tiny, PROMPTS, settings, hf=True, monkeypatch=monkeypatch)
        compactions.clear()
        three_at_a_time = run(tiny, PROMPTS, settings.model_copy(update={"batch_size": 3}))
    finally:
        tiny.model.generation_config.eos_token_id = original
    assert same(fast, reference)
    assert same(three_at_a_time, reference)  # rows that ended made room for waiting ones, with the same answers
    assert 2 <= [x.finish_reason for x in fast].count("stop") < len(fast)
    assert any(dead and alive for dead, alive, _ in compactions)  # ended rows left while others went on
    assert any(alive and admitted for _, alive, admitted in compactions)  # and waiting prompts joined them


def test_sampling_depends_on_each_rows_seed_only(tiny):
    settings = SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=40, repetition_penalty=1.2,
                              batch_size=len(PROMPTS))
    seeds = [g.row_seed(7, f"row{i}") for i in range(len(PROMPTS))]
    together = run(tiny, PROMPTS, settings, seeds=seeds)
    assert same(together, run(tiny, PROMPTS, settings, seeds=seeds))
    pairs = run(tiny, PROMPTS, settings.model_copy(update={"batch_size": 2}), seeds=seeds)
    assert same(together, pairs)  # other batch mates, same samples
    tokenizer, decoder = tiny.tokenizer, decoding.decoder_for(tiny.model)
    rows = [tokenizer(g.render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"] for c in PROMPTS]
    keys = [g.system_text(c) for c in PROMPTS]
    eos = g.eos_token_ids(tiny.model, tokenizer)
    order = [5, 0, 3, 6, 1, 4, 2]  # groups interleaved, two rows decoding at a time
    with torch.inference_mode():
        direct = decoder.generate([rows[i] for i in order], [keys[i] for i in order], settings,
                                  [seeds[i] for i in order], eos, batch_size=2)
    texts = [g.trim(tokenizer.decode(o.tokens, skip_special_tokens=True), g.continues_turn(PROMPTS[i]))
             for o, i in zip(direct, order, strict=True)]
    assert texts == [together[i].text for i in order]
    other = run(tiny, PROMPTS, settings, seeds=[s + 1 for s in seeds])
    assert not same(together, other)


def test_the_sampler_filters_logits_exactly_as_hf_warpers_do():
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    logits = torch.randn(5, 300) * 3
    previous = torch.randint(0, 300, (5, 7))
    settings = SamplingConfig(temperature=0.7, top_k=50, top_p=0.8, repetition_penalty=1.3)
    captured = {}
    real_softmax = torch.softmax

    def spy(x, dim=-1, **kw):
        captured["filtered"] = x.clone()
        return real_softmax(x, dim=dim, **kw)

    sampler = decoding.Sampler(settings, [1, 2, 3, 4, 5], torch.device("cpu"), 300)
    sampler.seen.scatter_(1, previous, True)
    torch.softmax = spy
    try:
        sampler(logits.clone())
    finally:
        torch.softmax = real_softmax
    expected = RepetitionPenaltyLogitsProcessor(1.3)(previous, logits.clone())
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(50), TopPLogitsWarper(0.8)):
        expected = warper(previous, expected)
    assert torch.equal(torch.isinf(captured["filtered"]), torch.isinf(expected))
    kept = ~torch.isinf(expected)
    assert torch.allclose(captured["filtered"][kept], expected[kept])
    greedy = decoding.Sampler(SamplingConfig(temperature=0.0), [0] * 5, torch.device("cpu"), 300)
    assert torch.equal(greedy(logits.clone()), logits.argmax(-1))


@pytest.mark.parametrize("peak", [6.0, 0.3])  # peaked: the nucleus lies in the top 1024; flat: it does not
def test_top_p_over_a_large_vocabulary_keeps_what_hf_keeps(peak):
    from transformers import TopPLogitsWarper

    torch.manual_seed(1)
    logits = torch.randn(6, 5000) * peak
    kept = decoding._nucleus(logits, 0.9)
    expected = ~torch.isinf(TopPLogitsWarper(0.9)(None, logits.clone()))
    assert torch.equal(kept, expected)
    assert (kept.sum(-1) > decoding.NUCLEUS_CANDIDATES).any() == (peak < 1)


def test_the_draw_follows_the_distribution_and_never_picks_an_impossible_token():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [0.1, 0.0, 0.0, 0.9, 0.0]])
    generators = [torch.Generator().manual_seed(s) for s in range(3)]
    draws = torch.stack([decoding.Sampler._draw(probs, generators) for _ in range(3000)])
    assert set(draws[:, 0].tolist()) == {1, 3} and set(draws[:, 1].tolist()) == {4}
    assert set(draws[:, 2].tolist()) == {0, 3}
    assert abs(float((draws[:, 0] == 1).float().mean()) - 0.5) < 0.05
    assert abs(float((draws[:, 2] == 0).float().mean()) - 0.1) < 0.03
    just_below_one = [type("G", (), {"device": torch.device("cpu")})() for _ in range(3)]
    real_rand = torch.rand
    torch.rand = lambda *a, **k: torch.tensor([1.0 - 2**-24])  # the largest uniform torch.rand can return
    try:
        edge = decoding.Sampler._draw(probs, just_below_one)
    finally:
        torch.rand = real_rand
    assert edge.tolist() == [3, 4, 3]


def test_prompts_filled_in_chunks_decode_as_hf_does(tiny, monkeypatch):
    monkeypatch.setattr(decoding, "PREFILL_CHUNK", 16)  # the 130-token system prompts take several chunks
    settings = SamplingConfig(max_new_tokens=10, batch_size=len(PROMPTS))
    decoding.decoder_for(tiny.model).prefixes.clear()
    chunked = run(tiny, PROMPTS, settings)
    assert same(chunked, run(tiny, PROMPTS, settings, hf=True, monkeypatch=monkeypatch))


def test_prefixes_are_kept_extended_and_dropped_when_the_weights_change(tiny_model_dir):
    loaded = load_model(ModelConfig(name=str(tiny_model_dir)))
    decoder = decoding.decoder_for(loaded.model)
    settings = SamplingConfig(max_new_tokens=8, batch_size=8)
    first = run(loaded, PROMPTS, settings)
    kept = dict(decoder.prefixes)
    assert len(kept) == 2  # one per system prompt
    long_b = max(kept, key=len)
    short_a = min(kept, key=len)
    assert long_b[:decoding.MIN_PREFIX] == short_a[:decoding.MIN_PREFIX]  # SPEC_B extends SYSTEM's beginning
    computed = []
    real_fill = decoder._fill
    decoder._fill = lambda *a, **k: computed.append(a[0].shape) or real_fill(*a, **k)
    try:
        assert same(run(loaded, PROMPTS, settings), first)
        assert all(shape[0] == len(PROMPTS) for shape in computed)  # only the rows' own tokens, no prefix again
        decoder.prefixes.clear()
        computed.clear()
        run(loaded, [p for p in PROMPTS if not isinstance(p, str) and p[0] is SYSTEM], settings)
        run(loaded, [p for p in PROMPTS if not isinstance(p, str) and p[0] is SPEC_B], settings)
        prefix_fills = [shape for shape in computed if shape[0] == 1]
        # SPEC_B's prefix was computed from the part it shares with SYSTEM's, not from its first token
        assert prefix_fills[1][1] < len(long_b) - decoding.MIN_PREFIX
        # and its keys/values are those of a prefix computed from scratch
        extended = decoder.prefixes[long_b]
        decoder.prefixes.clear()
        with torch.inference_mode():
            scratch = decoder.prefix(long_b)
        for (k1, v1), (k2, v2) in zip(extended.kv, scratch.kv, strict=True):
            assert torch.allclose(k1, k2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)
    finally:
        decoder._fill = real_fill
    with torch.no_grad():
        for layer in loaded.model.model.layers:  # an optimizer step, in place, on what the kept prefixes hold
            layer.self_attn.v_proj.weight.copy_(torch.randn_like(layer.self_attn.v_proj.weight) * 3)
    changed = run(loaded, PROMPTS, settings)
    assert not same(changed, first)
    decoding._DECODERS.clear()
    assert same(changed, run(loaded, PROMPTS, settings))  # what a fresh decoder computes from the new weights


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral"])
def test_other_llama_family_models_decode_as_hf_does(family, tmp_path, tiny_model_dir, monkeypatch):
    """q/k/v biases (Qwen2), per-head q/k norms (Qwen3), Mistral: a tiny random model of each, greedy, float32."""
    import transformers

    configs = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
               "mistral": transformers.MistralConfig}
    loaded = load_model(ModelConfig(name=str(tiny_model_dir)))
    base = loaded.model.config
    config = configs[family](vocab_size=base.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                             eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id,
                             sliding_window=None, use_sliding_window=False, tie_word_embeddings=False)
    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_config(config)
    if family == "qwen2":  # biases are zero at init; make them matter
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
                layer.self_attn.k_proj.bias.normal_(0, 0.5)
    model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    other = load_model(ModelConfig(name=str(tmp_path)))
    assert decoding.supported(other.model)
    settings = SamplingConfig(max_new_tokens=10, batch_size=len(PROMPTS))
    assert same(run(other, PROMPTS, settings), run(other, PROMPTS, settings, hf=True, monkeypatch=monkeypatch))


def test_a_model_outside_the_supported_families_uses_hf_generate(tmp_path, tiny_model_dir):
    import transformers

    loaded = load_model(ModelConfig(name=str(tiny_model_dir)))
    config = transformers.GPT2Config(vocab_size=loaded.model.config.vocab_size, n_embd=32, n_layer=2, n_head=4,
                                     n_positions=2048, eos_token_id=loaded.model.config.eos_token_id)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    gpt2 = load_model(ModelConfig(name=str(tmp_path)))
    assert not decoding.supported(gpt2.model)
    out = run(gpt2, PROMPTS[:3], SamplingConfig(max_new_tokens=4))
    assert all(x.num_tokens <= 4 for x in out)


def test_a_lora_model_decodes_through_its_adapters(tiny, monkeypatch):
    from peft import LoraConfig, get_peft_model

    settings = SamplingConfig(max_new_tokens=10, batch_size=len(PROMPTS))
    plain = run(tiny, PROMPTS, settings)
    peft_model = get_peft_model(tiny.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                       init_lora_weights=False))
    try:
        assert decoding.supported(peft_model)
        lora = type(tiny)(**{**tiny.__dict__, "model": peft_model})
        with_adapters = run(lora, PROMPTS, settings)
        assert same(with_adapters, run(lora, PROMPTS, settings, hf=True, monkeypatch=monkeypatch))
        with peft_model.disable_adapter():
            without = run(lora, PROMPTS, settings)
        assert not same(with_adapters, without)
        assert same(without, plain)  # switching the adapter off dropped the prefixes computed with it
    finally:
        peft_model.unload()


def test_rows_of_one_prefix_need_not_sit_together(tiny):
    """The decoder itself takes rows in any order: a group's rows are found wherever they are."""
    tokenizer = tiny.tokenizer
    convs = [PROMPTS[3], PROMPTS[5], PROMPTS[4], PROMPTS[6], PROMPTS[0]]
    rows = [tokenizer(g.render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"] for c in convs]
    keys = [g.system_text(c) for c in convs]
    decoder = decoding.decoder_for(tiny.model)
    settings = SamplingConfig(max_new_tokens=8)
    eos = g.eos_token_ids(tiny.model, tokenizer)
    with torch.inference_mode():
        mixed = decoder.generate(rows, keys, settings, [0] * 5, eos)
        order = [0, 2, 1, 3, 4]
        grouped = decoder.generate([rows[i] for i in order], [keys[i] for i in order], settings, [0] * 5, eos)
        two_at_a_time = decoder.generate(rows, keys, settings, [0] * 5, eos, batch_size=2)
    assert [o.tokens for o in mixed] == [grouped[order.index(i)].tokens for i in range(5)]
    assert [o.tokens for o in mixed] == [o.tokens for o in two_at_a_time]
    texts = [g.trim(tokenizer.decode(o.tokens, skip_special_tokens=True), g.continues_turn(c))
             for o, c in zip(mixed, convs, strict=True)]
    assert texts == [x.text for x in run(tiny, convs, settings)]
