"""`pairs` (judge-ranked preference pairs) and `dpo` (DPO, KTO, stepwise SACPO, MODPO)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from deliberate.config.base import Section, check_name
from deliberate.config.sampling import SamplingConfig
from deliberate.config.training import DatasetTrainingOptions
from deliberate.config.yamlio import describe_errors


class PairsConfig(SamplingConfig):
    """`pairs`: sample completions from a policy, judge them, pair the best with the worst. The sampling fields
    are `generation`'s, with temperature 0.8 and top_p 0.95 (the n samples need to differ)."""

    DEFAULTS = {"temperature": 0.8, "top_p": 0.95}

    policy: str | None = None
    """The model that writes the completions to rank: `base` (the recipe's `model`), `stage:sft`, `stage:<dpo stage>`, a folder or Hub id. The
    recipe's `model` when unset."""
    samples: int = Field(default=4, ge=2)
    """Completions sampled per prompt (n); the best and the worst of them make a pair."""
    also_from: list[str] = Field(default_factory=list, exclude_if=lambda v: not v)
    """More models that sample `samples` completions per prompt each, judged and ranked beside the policy's
    (`base`, `stage:sft`, a folder or Hub id). From `stage:sft` with `also_from: [base]`, a harmful prompt the SFT
    model refuses and the base answers, or a safe one the base answers and the SFT model refuses, makes a pair that
    contrasts refusing with answering even where the policy's own samples all agree (off-policy pairs)."""
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
    """Hub datasets only: the configuration name."""
    split: str | None = None
    """Hub datasets only: the split to read (`train` when unset)."""
    revision: str | None = Field(default=None, exclude_if=lambda v: v is None)  # unset: not in fingerprints
    """Hub datasets only: the branch, tag or commit to read."""
    preference: Literal["better", "safer"] = "safer"
    """PKU-SafeRLHF: which preference makes the pair (helpfulness `better` or harmlessness `safer`)."""
    limit: int | None = Field(default=None, ge=1)
    """Keep only the first N examples."""
    where: dict[str, str | int | bool | list[str | int | bool]] = Field(default_factory=dict,
                                                                        exclude_if=lambda v: not v)
    """Keep only rows whose column equals the value (or one of the listed values), before `limit`. `stage:pairs`
    rows carry each prompt's `expected` behaviour and `category`, so `{expected: comply}` keeps the pairs of
    prompts to answer and `{expected: [refuse, safe_complete]}` those of harmful ones (SACPO's helpfulness step,
    then its safety step)."""


class MarginConfig(Section):
    kind: Literal["implicit", "reward_model", "columns"] = "implicit"
    """`implicit`: the implicit reward beta * (log pi_m(y|x) - log pi_ref(y|x)) of a frozen model m (a DPO
    adapter or model, e.g. the safety stage, as MODPO's scripts); `reward_model`: the scalar r(x, y) of a reward
    model (`rm:<name>` from `deliberate rm`, or any sequence classifier); `columns`: precomputed scores in the
    data (e.g. the judge scores that `deliberate pairs` writes)."""
    model: str | None = None
    """`implicit`: the scorer model (`stage:<dpo stage>`, a folder, an adapter or a Hub id); `reward_model`: the
    reward model (`rm:<name>`, a folder or a Hub id)."""
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


class DPOOptions(DatasetTrainingOptions):
    """`dpo`: offline preference optimisation (TRL DPOTrainer / KTOTrainer; MODPO on DPO's loss)."""

    DEFAULTS = {"learning_rate": 5e-7, "num_train_epochs": 1.0, "per_device_train_batch_size": 4, "save_steps": 100}
    OWN_FIELDS = DatasetTrainingOptions.OWN_FIELDS | {
        "method", "data", "start", "beta", "weight", "margin", "undesirable_weight", "stages", "name"}
    COMPUTED = frozenset({"logging_first_step", "remove_unused_columns"})

    def trl_configs(self) -> list[str]:
        return ["KTOConfig"] if self.method == "kto" else ["DPOConfig"]

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
    precompute_ref_log_probs: bool = False
    """Compute the reference model's log-probabilities once before training instead of in every step: faster
    for several epochs, and with full fine-tuning no reference copy stays in memory. MODPO always does."""
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
                raise ValueError(f"dpo.stages[{i}] needs a name")
            if hub := sorted({"push_to_hub", "hub_model_id", "hub_private"} & set(raw)):
                raise ValueError(f"dpo.stages[{i}] ({raw['name']}): {hub[0]} is set for the whole dpo section (every "
                                 "stage's models are pushed; hub_model_id takes {label}), not per stage")
            merged = {**base, **{k: v for k, v in raw.items() if k not in {"data", "margin"}}}
            for key in ("data", "margin"):
                merged[key] = {**base[key], **raw.get(key, {})}
            if "start" not in raw and i > 0:
                merged["start"] = "previous"
            try:
                stage = DPOStage(**merged)
            except ValidationError as e:
                where = ", ".join(describe_errors(DPOStage, e)[:2])
                raise ValueError(f"dpo.stages[{i}] ({raw['name']}): {where}") from None
            if stage.name in names:
                raise ValueError(f"dpo.stages: the name '{stage.name}' is used twice")
            names.add(stage.name)
            out.append(stage)
        return out


class DPOStage(DPOOptions):
    name: str
    """The stage's name: its outputs go to `<output_dir>/dpo/<name>/`, and `stage:<name>` refers to its model."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        check_name(v)
        if v in ("sft", "rl"):
            raise ValueError(f"'{v}' is taken: stage:{v} names the {v} verb's model")
        return v
