"""The recipe: one YAML file that says which model, spec, data and judge a run uses, and each stage's settings.

Every field is documented here; these docstrings are the reference for recipe authors. A recipe is validated
when it is loaded: an unknown field, a wrong type or a bad value is reported as one line that names the file
and the field. Any field can be overridden from the command line with `--set section.field=value` (the value is
read as YAML, so `--set sft.learning_rate=1e-4` is a float and `--set data.where.split=heldout` a string).

Relative paths in a recipe (data files, spec files, output folders) are relative to the directory you run
`deliberate` from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deliberate.config.yamlio import load_yaml_file, parse_yaml, validate
from deliberate.errors import DeliberateError
from deliberate.services.io import write_yaml

Expected = Literal["comply", "refuse", "safe_complete"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ModelConfig(Section):
    name: str = "smollm2"
    """A Hugging Face Hub id, a local model folder, a PEFT adapter folder, or `smollm2` (the embedded
    SmolLM2-135M-Instruct)."""
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


class ColumnMap(Section):
    prompt: str = "prompt"
    """Column holding the user prompt."""
    category: str | None = None
    """Column holding the safety category (matched against the spec's ids, titles and aliases)."""
    expected: str | None = None
    """Column holding the expected behaviour or a safe/unsafe label (mapped through `label_map`)."""
    id: str | None = None
    """Column holding a stable row id; row numbers are used when unset."""


class DataConfig(Section):
    source: str = "builtin:demo"
    """`builtin:demo` (the project's demo prompts), a local .csv/.json/.jsonl/.parquet file (optionally .gz),
    an http(s) URL of such a file (downloaded once into the cache), or a Hugging Face dataset id."""
    subset: str | None = None
    """Dataset configuration name, for Hub datasets that have several."""
    split: str = "train"
    """Split to read from a Hub dataset."""
    columns: ColumnMap = Field(default_factory=ColumnMap)
    """Which columns hold what. For `builtin:demo` and files with the standard names this can stay unset."""
    category: str | None = None
    """One category for every row (e.g. `illicit_behavior` for AdvBench), when there is no category column."""
    expected: Expected | None = None
    """One expected behaviour for every row (e.g. `refuse` for a set of harmful prompts)."""
    category_map: dict[str, str] = Field(default_factory=dict)
    """Rename dataset categories to spec categories, e.g. `{"Illegal goods and services": illicit_behavior}`;
    names the spec already knows (ids, titles, aliases) need no entry."""
    label_map: dict[str, Expected] = Field(default_factory=dict)
    """Extra mappings from label values to expected behaviours, on top of the built-in ones (safe -> comply,
    unsafe/harmful -> refuse, ...)."""
    where: dict[str, str | int | bool | list[str | int | bool]] = Field(default_factory=dict)
    """Keep only rows whose column equals the value (or one of the listed values), e.g. `{split: heldout}`."""
    limit: int | None = Field(default=None, ge=1)
    """Keep only the first N rows (after `where`)."""


class GenerationConfig(Section):
    max_new_tokens: int = Field(default=256, ge=1)
    """Most tokens generated per answer; generation stops earlier at the model's end-of-sequence token."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0 means greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    """0 disables top-k filtering."""
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    """Above 1, makes tokens the answer already produced less likely (against loops). Only the answer's own
    tokens count, not the prompt's: a prompt that shows refusals (worked examples) does not make refusing
    unlikely."""
    batch_size: int = Field(default=16, ge=1)
    """Prompts generated together; prompts are sorted by length first so batches waste little padding."""
    seed: int = 0
    """Sampling seed."""


class JudgeConfig(Section):
    backend: Literal["rules", "openai", "hf", "classifier"] = "rules"
    """`rules` (offline refusal detection), `openai` (any OpenAI-compatible server), `hf` (a local generative
    model) or `classifier` (a local reward/cost model)."""
    model: str | None = None
    """The judge model: an API model name for `openai`, a folder or Hub id for `hf` and `classifier`."""
    base_url: str | None = None
    """Endpoint for `openai` (e.g. a vLLM server); the OpenAI API when unset."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key. The key itself never goes in a recipe."""
    max_concurrency: int = Field(default=16, ge=1)
    """Requests in flight at once."""
    timeout: float = Field(default=60.0, gt=0)
    """Seconds per request."""
    max_retries: int = Field(default=6, ge=0)
    """Retries of a failed request (429, 5xx, timeout), with exponential backoff."""
    repeats: int = Field(default=1, ge=1)
    """Times each item is judged (k); pointwise repeats are aggregated by `aggregate`."""
    aggregate: Literal["min", "mean"] = "min"
    """How repeated pointwise scores combine: `min` is the deliberative-alignment filter."""
    hide_reasoning: bool = True
    """Judge only the final answer, with the chain of thought removed."""
    temperature: float = Field(default=0.0, ge=0)
    """Sampling temperature of a generative judge."""
    max_tokens: int = Field(default=512, ge=16)
    """Longest judge output (a generative judge's JSON verdict and rationale)."""
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    """How the openai backend asks for JSON: a strict JSON schema, JSON mode, or the prompt alone (for servers
    that support neither). The output is parsed strictly in every case."""
    backoff_base: float = Field(default=1.0, gt=0)
    """Seconds of the first retry's backoff; it doubles per retry (with full jitter), up to `backoff_max`."""
    backoff_max: float = Field(default=60.0, gt=0)
    """Longest backoff between retries, in seconds (a longer Retry-After is still honoured)."""
    cache: str | None = None
    """Judgment cache (SQLite file); `~/.cache/deliberate/judge_cache.sqlite` when unset, `none` to disable."""
    higher_is_better: bool = True
    """For a classifier judge: True for a reward model, False for a cost model."""
    max_calls: int | None = Field(default=None, ge=0)
    """Budget: the most judgments one command may ask the backend for (cache hits are free). A batch that would
    go over it is not sent; the command stops with an error, keeping what is already judged (and cached)."""


class GenerateConfig(Section):
    backend: Literal["hf", "vllm", "openai"] = "hf"
    """`hf` (batched transformers generation), `vllm` (needs the `vllm` extra and a GPU) or `openai` (a
    stronger teacher behind any OpenAI-compatible API)."""
    teacher: str | None = None
    """The model that writes the reasoning and answers: a model as in `model.name` for `hf`/`vllm`, an API model
    name for `openai`. The recipe's `model` when unset (the model teaches itself, as in the paper)."""
    samples: int = Field(default=4, ge=1)
    """Completions sampled per prompt (k)."""
    samples_by_expected: dict[Expected, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    """Per expected behaviour, a different k, e.g. `{comply: 2}` for fewer samples of safe prompts."""
    samples_by_meta: dict[str, dict[str, Annotated[int, Field(ge=0)]]] = Field(default_factory=dict)
    """Per value of another prompt column, a different k; it wins over `samples_by_expected`. E.g.
    `{kind: {borderline: 3}}` samples the built-in prompts that only sound harmful three times."""
    temperature: float = Field(default=0.7, ge=0.0)
    """Sampling temperature; the k samples need some diversity (0 would make them identical)."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    """As `generation.repetition_penalty` (the completion's own tokens only) for the hf backend; vLLM and most
    servers also count the prompt's tokens."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Most tokens per completion, reasoning and answer together; a completion cut off before its answer is
    malformed and dropped by the filter."""
    reasoning_budget: int | None = Field(default=None, ge=1)
    """`hf`: at most this many tokens of reasoning; a block still open then is closed (budget forcing, as in
    s1) and the answer is generated after it. Unset: the teacher must close the block itself."""
    batch_size: int = Field(default=16, ge=1)
    """Completions generated together (`hf`)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Teacher weights dtype for generation; bfloat16 is about 2.6x faster than float32 on a recent CPU."""
    instructions: str | None = None
    """What the system prompt asks after the spec: a file path or the text itself. The built-in instructions
    (reason in <think>...</think>, name the category, quote the rule, choose the style, then answer; with worked
    examples) when unset."""
    few_shot: bool = True
    """Show the teacher worked examples (built in) as earlier conversation turns; never part of the SFT data."""
    prefill: str = "<think>\n"
    """Text the assistant turn starts with (the opening reasoning tag), continued by the teacher; empty for none.
    `{category}` is replaced by the prompt's category id, the one whose spec is in the system prompt, so that the
    reasoning starts by citing it (e.g. `"<think>\nCategory: {category}."`)."""
    base_url: str | None = None
    """Endpoint of the `openai` teacher; the OpenAI API when unset."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the `openai` teacher's API key."""
    max_concurrency: int = Field(default=16, ge=1)
    """Requests in flight at once (`openai`)."""
    timeout: float = Field(default=120.0, gt=0)
    """Seconds per request (`openai`)."""
    max_retries: int = Field(default=6, ge=0)
    """Retries of a failed request (`openai`)."""


class FilterConfig(Section):
    threshold: float = Field(default=7.0, ge=0, le=10)
    """Keep a completion when its minimum judge score over `judge.repeats` judgments is at least this (0-10)."""
    judge_sees_reasoning: bool = True
    """Show the judge the reasoning as well as the answer (the paper's SFT filter); False judges answers only."""
    keep_per_prompt: int = Field(default=1, ge=0)
    """Keep at most this many passing completions per prompt (the best-scored first); 0 keeps all."""
    require_citation: bool = False
    """Also drop completions whose reasoning does not cite the prompt's category."""


class TrainingOptions(Section):
    """Fields every training verb (sft, dpo, rl) shares."""

    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    lora_target_modules: list[str] | str = "all-linear"
    """Modules that get LoRA weights: `all-linear` or a list of module names."""
    bf16: bool | None = None
    """bfloat16 mixed precision: unset means on a GPU that supports it; `true` also on a CPU (about 2.5x faster
    training on a recent x86 CPU with bfloat16 instructions, at bfloat16's precision)."""
    logging_steps: int = Field(default=5, ge=1)
    """Optimizer steps between loss reports."""


class SFTConfig(TrainingOptions):
    learning_rate: float = Field(default=2e-5, gt=0)
    num_train_epochs: float = Field(default=2.0, gt=0)
    per_device_train_batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Batches whose gradients are summed before each optimiser step."""
    max_length: int = Field(default=1024, ge=16)
    """Longest training sequence in tokens; longer examples are truncated."""
    lora: bool = True
    """Train a LoRA adapter (True) or all weights (False)."""
    keep_reasoning: bool = True
    """Keep the chain of thought in the training target (deliberative alignment) or train on answers only."""
    save_merged: bool = False
    """With LoRA, also save the adapter merged into the base weights (`sft/merged`)."""
    save_steps: int = Field(default=50, ge=1)
    """Optimizer steps between checkpoints (`sft --resume` continues from the last one)."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 runs `num_train_epochs`."""


class PairsConfig(Section):
    policy: str | None = None
    """The model that writes the completions to rank: `base` (the recipe's `model`), `stage:sft`, `stage:<dpo stage>`, a folder or Hub id. The
    recipe's `model` when unset."""
    samples: int = Field(default=4, ge=2)
    """Completions sampled per prompt (n); the best and the worst of them make a pair."""
    temperature: float = Field(default=0.8, gt=0.0)
    """Sampling temperature (the n samples need to differ)."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    """As `generation.repetition_penalty`: the completion's own tokens only."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Most tokens per completion (reasoning and answer together)."""
    batch_size: int = Field(default=16, ge=1)
    """Completions generated together."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Policy weights dtype for sampling."""
    judge_sees_reasoning: bool = False
    """Show the judge the chain of thought too; by default it judges the final answer only (as the RL stage)."""
    min_margin: float = Field(default=1.0, ge=0)
    """A pair needs best score - worst score >= this (and > 0: equal scores are a tie and make no pair)."""
    kto_threshold: float = Field(default=7.0, ge=0, le=10)
    """KTO examples: desirable when the score is at least this, undesirable otherwise."""
    drop_cut_off: bool = True
    """Leave out completions cut off at max_new_tokens (an unfinished answer is neither good nor bad data)."""


class PreferenceData(Section):
    source: str = "stage:pairs"
    """`stage:pairs` (this recipe's `deliberate pairs` output), a local file, an http(s) URL or a Hub dataset id."""
    format: Literal["auto", "trl", "trl_unpaired", "pku", "hh", "pair_list"] = "auto"
    """`trl`: prompt/chosen/rejected; `trl_unpaired`: prompt/completion/label; `pku`: PKU-SafeRLHF
    (response_0/1 with better_response_id, safer_response_id, is_response_N_safe); `hh`: HH-RLHF chosen/rejected
    transcripts; `pair_list`: prompt and a two-item `response` list [chosen, rejected]. `auto` tells them apart
    by their columns."""
    subset: str | None = None
    """Hub dataset configuration."""
    split: str = "train"
    """Hub dataset split."""
    preference: Literal["better", "safer"] = "safer"
    """PKU-SafeRLHF: which preference makes the pair (helpfulness `better` or harmlessness `safer`)."""
    limit: int | None = Field(default=None, ge=1)
    """Keep only the first N examples."""


class MarginConfig(Section):
    kind: Literal["implicit", "columns"] = "implicit"
    """`implicit`: the implicit reward beta * (log pi_m(y|x) - log pi_ref(y|x)) of a frozen model m (a DPO
    adapter or model, e.g. the safety stage); `columns`: precomputed scores in the data (e.g. the judge scores
    that `deliberate pairs` writes)."""
    model: str | None = None
    """`implicit`: the scorer model (`stage:<dpo stage>`, a folder, an adapter or a Hub id)."""
    reference: str | None = None
    """`implicit`: its reference model; the stage's starting model when unset."""
    beta: float = Field(default=0.1, gt=0)
    """`implicit`: the beta the scorer was trained with."""
    chosen_column: str = "score_chosen"
    """`columns`: the column holding the chosen completion's score."""
    rejected_column: str = "score_rejected"
    """`columns`: the column holding the rejected completion's score."""
    scale: float = 1.0
    """Multiplies the margin score (e.g. to turn a 0-10 judge score into a reward's scale)."""


class DPOConfig(TrainingOptions):
    method: Literal["dpo", "kto", "modpo"] = "dpo"
    """`dpo` (TRL DPOTrainer), `kto` (TRL KTOTrainer, on desirable/undesirable labels) or `modpo` (DPO with a
    margin from a frozen scorer, weighted by `weight`)."""
    data: PreferenceData = Field(default_factory=PreferenceData)
    """The preference data (pairs for dpo/modpo; labels for kto, or pairs split into one desirable and one
    undesirable example each)."""
    start: str | None = None
    """The model training starts from and, for dpo/kto, the reference: `previous` (the stage before, SACPO),
    `base` (the recipe's `model`), `stage:sft`, `stage:<dpo stage>`, a folder or Hub id. The first stage's default is the recipe's `model`;
    later stages default to `previous`."""
    beta: float | list[float] = 0.1
    """KL strength; a list runs one model per value (SACPO's beta/lambda sweep)."""
    weight: float | list[float] = 0.5
    """MODPO: the weight w of this stage's preference (1 - w goes to the margin); a list runs one model per w."""
    margin: MarginConfig = Field(default_factory=MarginConfig)
    """MODPO: where the margin score comes from."""
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"])
    """TRL DPO loss variants (combined when several), e.g. `[sigmoid]`, `[ipo]`, `[hinge]`, `[sigmoid, bco_pair]`;
    for KTO one of `kto`, `apo_zero_unpaired`."""
    desirable_weight: float = Field(default=1.0, gt=0)
    """KTO: weight of desirable examples."""
    undesirable_weight: float | None = Field(default=None, gt=0)
    """KTO: weight of undesirable examples; n_desirable / n_undesirable when unset (SACPO)."""
    learning_rate: float = Field(default=5e-7, gt=0)
    num_train_epochs: float = Field(default=1.0, gt=0)
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 runs `num_train_epochs`."""
    per_device_train_batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Batches whose gradients are summed before each optimiser step."""
    max_length: int = Field(default=1024, ge=16)
    """Longest prompt + completion in tokens (truncated beyond)."""
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Fraction of the steps over which the learning rate warms up from 0."""
    lora: bool = True
    """Train a LoRA adapter (the adapter-disabled model is then the reference) or all weights. Either way the
    stage's `model/` folder holds full weights (the adapter merged), so later stages, merges and evals read it."""
    precompute_ref_log_probs: bool = False
    """Compute the reference model's log-probabilities once before training instead of in every step: faster
    for several epochs, and with full fine-tuning no reference copy stays in memory. MODPO always does."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory (large models on a GPU), slower steps."""
    save_steps: int = Field(default=100, ge=1)
    """Optimizer steps between checkpoints (`dpo --resume` continues from the last one)."""
    stages: list[dict[str, Any]] = Field(default_factory=list)
    """Stepwise training (SACPO): a list of stages, each a mapping with a `name` and any field above (fields it
    does not set come from this section). Each stage starts from `start` (by default the previous stage's
    result, which is also its reference). A swept stage followed by another stage runs that stage once per
    swept model."""

    @field_validator("beta", "weight")
    @classmethod
    def _positive(cls, v: float | list[float], info) -> float | list[float]:
        values = v if isinstance(v, list) else [v]
        if not values or any(x <= 0 for x in values) or (info.field_name == "weight" and any(x > 1 for x in values)):
            raise ValueError("must be > 0" + (" and <= 1" if info.field_name == "weight" else "")
                             + " (a number or a non-empty list)")
        return v

    def sweep(self) -> list[tuple[str, float, float]]:
        """(variant name, beta, weight) for every model this stage trains: one per beta (and per w for MODPO)."""
        betas = self.beta if isinstance(self.beta, list) else [self.beta]
        weights = (self.weight if isinstance(self.weight, list) else [self.weight]) if self.method == "modpo" else [1.0]
        out = []
        for b in betas:
            for w in weights:
                parts = ([f"beta{b:g}"] if isinstance(self.beta, list) else []) + (
                    [f"w{w:g}"] if isinstance(self.weight, list) and self.method == "modpo" else [])
                out.append(("-".join(parts), b, w))
        return out

    def stage_list(self) -> list[DPOStage]:
        """The stages to run: `stages`, each completed from this section's fields; or this section alone."""
        base = self.model_dump(exclude={"stages"})
        if not self.stages:
            return [DPOStage(name=self.method, **base)]
        out, names = [], set()
        for i, raw in enumerate(self.stages):
            if not isinstance(raw, dict) or not raw.get("name"):
                raise ValueError(f"stages[{i}] needs a name")
            merged = {**base, **{k: v for k, v in raw.items() if k not in {"data", "margin"}}}
            for key in ("data", "margin"):
                merged[key] = {**base[key], **raw.get(key, {})}
            if "start" not in raw and i > 0:
                merged["start"] = "previous"
            try:
                stage = DPOStage(**merged)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(x) for x in err["loc"])
                raise ValueError(f"stages[{i}] ({raw['name']}): {where}: {err['msg']}") from None
            if stage.name in names:
                raise ValueError(f"stages: the name '{stage.name}' is used twice")
            names.add(stage.name)
            out.append(stage)
        return out


class DPOStage(DPOConfig):
    name: str
    """The stage's name: its outputs go to `<output_dir>/dpo/<name>/`, and `stage:<name>` refers to its model."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '.', '_' and '-'")
        if v in ("sft", "rl"):
            raise ValueError(f"'{v}' is taken: stage:{v} names the {v} verb's model")
        return v


class RLConfig(TrainingOptions):
    algo: Literal["grpo", "rloo", "ppo", "ppo-lagrangian"] = "grpo"
    """`grpo` / `rloo` (TRL's trainers, no value model), `ppo` (this toolkit's PPO with a value model) or
    `ppo-lagrangian` (PPO maximising reward - lambda * cost with a learned multiplier, as Safe RLHF)."""
    start: str | None = None
    """The policy's starting model, also the KL reference: `stage:sft`, `stage:<dpo stage>`, `merge:...`, a
    folder, an adapter folder or a Hub id. The recipe's `model` when unset."""
    data: DataConfig | None = None
    """Training prompts (each needs a category or an expected behaviour for the judge); the recipe's `data`
    when unset."""
    reward_judge: JudgeConfig | None = None
    """The reward judge; the recipe's `judge` when unset. It gets spec_for(category), the prompt and the final
    answer only, never the reasoning. Reward = score / 10 (a `classifier` judge: the reward model's scalar); a
    completion with no final answer gets 0 unjudged; a failed judgment gives no reward (the completion carries
    no learning signal), never a made-up one."""
    reward_function: str | None = None
    """Instead of the judge: a Python function `package.module:name` or `path/to/file.py:name`, called as
    f(prompts, completions, answers=..., category=..., expected=...) and returning one float (or None for no
    reward) per completion; it may be `async def`."""
    format_reward: float = Field(default=0.0, ge=0)
    """Added to the reward of a completion that reasons in a well-formed `<think>...</think>` block and then
    answers."""
    cost_judge: JudgeConfig | None = None
    """`ppo-lagrangian`: the cost judge (e.g. a harmlessness judge or a classifier cost model); the reward judge
    when unset."""
    cost: Literal["unsafe", "score"] = "unsafe"
    """`ppo-lagrangian`: cost = 1 when the cost judge's verdict is `unsafe`, else 0 (`unsafe`), or 1 - score / 10
    (`score`); a `classifier` cost judge (a cost model) gives its own scalar."""
    cost_function: str | None = None
    """`ppo-lagrangian`: a Python cost function instead of the cost judge (same form as `reward_function`)."""
    cost_threshold: float = 0.1
    """`ppo-lagrangian`: the constraint mean cost <= threshold (Safe RLHF's d)."""
    lambda_init: float = Field(default=1.0, gt=0)
    """`ppo-lagrangian`: the multiplier's starting value (it is learned as log lambda, so it stays > 0)."""
    lambda_lr: float = Field(default=0.1, gt=0)
    """`ppo-lagrangian`: learning rate of log lambda (SGD on -(mean cost - threshold) * lambda, as Safe RLHF)."""
    lambda_max: float | None = Field(default=None, gt=0)
    """`ppo-lagrangian`: an upper bound on lambda."""
    lambda_update_delay: int = Field(default=0, ge=0)
    """`ppo-lagrangian`: steps before lambda starts to move (the critic settles first)."""
    max_steps: int = Field(default=100, ge=1)
    """RL steps; each samples completions, scores them and makes one optimisation round on them."""
    prompts_per_step: int = Field(default=8, ge=1)
    """Prompts per step (over all processes)."""
    num_generations: int | None = Field(default=None, ge=1)
    """Completions per prompt: the group size for `grpo` / `rloo` (8 when unset, at least 2), 1 for PPO when
    unset."""
    max_new_tokens: int = Field(default=128, ge=1)
    """Most tokens per completion (reasoning and answer together)."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature of the completions (log-probabilities are taken at the same temperature)."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling of the completions."""
    learning_rate: float = Field(default=1e-6, gt=0)
    """Policy learning rate."""
    value_learning_rate: float | None = Field(default=None, gt=0)
    """PPO: the value model's learning rate; 5 x `learning_rate` when unset."""
    kl_coef: float = Field(default=0.05, ge=0)
    """Weight of the KL penalty to the reference (GRPO/RLOO's beta; PPO's starting coefficient)."""
    adaptive_kl: bool = False
    """PPO: adapt the KL coefficient towards `kl_target` (Ziegler et al.'s controller) instead of keeping it."""
    kl_target: float = Field(default=6.0, gt=0)
    """PPO with `adaptive_kl`: the per-sequence KL the controller aims at."""
    kl_horizon: int = Field(default=10000, ge=1)
    """PPO with `adaptive_kl`: the controller's horizon in samples."""
    ppo_epochs: int | None = Field(default=None, ge=1)
    """Optimisation passes over each step's completions: 4 for PPO when unset, 1 for GRPO/RLOO (TRL's
    `num_iterations`)."""
    mini_batch_size: int | None = Field(default=None, ge=1)
    """Completions per optimiser update on each process (PPO) or per forward pass (GRPO/RLOO); all of a step's
    completions when unset."""
    clip_range: float = Field(default=0.2, gt=0)
    """Clipping of the policy ratio (epsilon)."""
    clip_range_value: float = Field(default=0.2, gt=0)
    """PPO: clipping of the value prediction around the old value."""
    gamma: float = Field(default=1.0, ge=0, le=1)
    """PPO: discount of generalised advantage estimation."""
    lam: float = Field(default=0.95, ge=0, le=1)
    """PPO: lambda of generalised advantage estimation."""
    whiten_advantages: bool = True
    """PPO: normalise advantages to mean 0 and std 1 over each step's tokens."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradients are clipped to this norm."""
    loss_type: str | None = None
    """GRPO: TRL's loss variant (`grpo`, `dapo`, `dr_grpo`, `bnpo`, ...); TRL's default when unset."""
    lora: bool = True
    """Train a LoRA adapter (the adapter-disabled model is then the reference) or all weights. `rl/model` holds
    full weights either way."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, slower steps."""
    use_vllm: bool = False
    """GRPO/RLOO: generate with vLLM (needs the `vllm` extra and a GPU)."""
    save_steps: int = Field(default=50, ge=1)
    """Steps between checkpoints (`rl --resume` continues from the last one)."""
    logging_steps: int = Field(default=1, ge=1)
    """GRPO/RLOO: steps between metric reports (PPO logs every step)."""

    @model_validator(mode="after")
    def _groups(self) -> RLConfig:
        if self.algo in ("grpo", "rloo") and self.generations() < 2:
            raise ValueError(f"{self.algo} compares completions within a group: num_generations must be at least 2")
        return self

    def epochs(self) -> int:
        if self.ppo_epochs is not None:
            return self.ppo_epochs
        return 1 if self.algo in ("grpo", "rloo") else 4

    def generations(self) -> int:
        if self.num_generations is not None:
            return self.num_generations
        return 8 if self.algo in ("grpo", "rloo") else 1


class MergeSpec(Section):
    name: str
    """The merge's name: outputs go to `<output_dir>/merge/<name>/`, and `merge:<name>` refers to it."""
    method: Literal["linear", "task_arithmetic", "ties", "dare_ties", "slerp"] = "linear"
    """mergekit merge method."""
    models: list[str]
    """Models to merge: folders, `stage:...` models, Hub ids, or LoRA adapter folders (merged into their base
    first)."""
    weights: list[float] = Field(default_factory=list)
    """One weight per model (`linear`: mixing weights; `task_arithmetic`/`ties`/`dare_ties`: task-vector
    weights). Equal weights when unset."""
    alphas: list[float] = Field(default_factory=list)
    """Two models only: one merge per a with weights (1 - a, a) (P-SACPO: (1 - a) * helpful + a *
    helpful-then-safe); for `slerp` a is the interpolation factor t."""
    base_model: str | None = None
    """`task_arithmetic`, `ties`, `dare_ties`: the model the task vectors are taken from (e.g. the SFT model);
    `slerp`: the first model when unset."""
    density: float = Field(default=0.5, gt=0, le=1)
    """`ties`/`dare_ties`: fraction of each task vector kept."""
    normalize: bool = True
    """`linear`/`ties`/`dare_ties`: divide by the sum of the weights."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the merge is computed and saved in."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return DPOStage._safe_name(v)


class MergeConfig(Section):
    merges: list[MergeSpec] = Field(default_factory=list)
    """The merges to run, in order (a later merge may use `merge:<name>` of an earlier one)."""


class EvalConfig(Section):
    benchmarks: list[str] = Field(default_factory=lambda: ["demo"])
    """Benchmark names from `eval/` or data files."""
    models: list[str] = Field(default_factory=list)
    """Models to compare; the recipe's `model` is the base they are compared with."""
    pairwise: bool = True
    """Judge each model's answers against the base model's, on each benchmark's criteria (helpfulness,
    harmlessness): win rates and Elo ratings."""
    pairwise_against: Literal["base", "all"] = "base"
    """`base`: every model against the base; `all`: every pair of models (more judge calls, better Elo)."""
    pairwise_repeats: int = Field(default=3, ge=1)
    """Times each answer pair is judged in each order (SACPO: 3)."""
    bootstrap_samples: int = Field(default=1000, ge=100)
    """Resamples for the 95% confidence intervals."""
    elo_trials: int = Field(default=50, ge=1)
    """Shuffled orders the Elo ratings are averaged over (and bootstrap resamples for their interval)."""
    elo_epochs: int = Field(default=10, ge=1)
    """Passes over the games in each trial."""
    datasets_dir: str | None = None
    """A folder with local copies of benchmark data: a benchmark's `mirror` file is read from here instead of
    its Hub source when it exists. `$DELIBERATE_DATASETS` when unset."""
    plots: bool = True
    """Write PNG plots next to the report."""


class Recipe(Section):
    name: str = "default"
    """A name for the run; it appears in reports."""
    output_dir: Path = Path("runs/default")
    """Where every stage writes its outputs (one subfolder per stage)."""
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    spec: str = "default"
    """The policy spec: `default` (built in) or a path to a spec YAML file."""
    data: DataConfig = Field(default_factory=DataConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("name")
    @classmethod
    def _name_is_a_word(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _stages_are_valid(self) -> Recipe:
        self.dpo.stage_list()  # a bad stage is reported when the recipe is loaded, not hours later
        names = [m.name for m in self.merge.merges]
        if len(set(names)) != len(names):
            raise ValueError("merge.merges: two merges have the same name")
        return self

    def save(self, path: str | Path) -> Path:
        """Write the fully resolved recipe (overrides applied); it holds no secrets by construction."""
        return write_yaml(path, self.model_dump(mode="json"))


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` assignment to nested dicts, reading the value as YAML 1.2."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DeliberateError(f"--set '{assignment}': expected section.field=value")
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise DeliberateError(f"--set '{assignment}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = parse_yaml(raw, f"--set {key}") if raw.strip() else ""


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`: mappings merge key by key, anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file as a mapping, with the files it `extends` (relative to it) merged underneath, in order."""
    data: Any = load_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DeliberateError(f"{path}: a recipe is a mapping of sections (model, data, ...), got {type(data).__name__}")
    parents = data.pop("extends", None) or []
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        parent_path = (path.resolve().parent / str(parent)).resolve()
        if parent_path in seen:
            raise DeliberateError(f"{path}: extends {parent}, which extends it back")
        if not parent_path.is_file():
            raise DeliberateError(f"{path}: extends {parent}, which does not exist ({parent_path})")
        merged = _deep_merge(merged, _read_recipe(parent_path, (*seen, parent_path)))
    return _deep_merge(merged, data)


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe (the defaults when `path` is None), then apply `--set` overrides.

    A recipe may start with `extends: other.yaml` (or a list of files, later ones winning), relative to itself:
    it then holds only what differs, e.g. a small CPU variant of a GPU recipe."""
    data: Any = _read_recipe(Path(path), (Path(path).resolve(),)) if path else {}
    source = str(path) if path else "defaults"
    for assignment in overrides or []:
        apply_override(data, assignment)
    if overrides:
        source += " with --set " + ", ".join(a.partition("=")[0] for a in overrides)
    return validate(Recipe, data, source)
