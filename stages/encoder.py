"""The encoder a stage starts from: the base model fitted to the tokenizer stage's vocabulary.

Shared by `pretrain` (with a masked-LM head) and `train` (with a classification head), so both
start from the same weights: in `extend` mode the base model with one embedding row per added
token, set to the mean of the rows of the sub-tokens that word used to split into; in `scratch`
mode the base architecture with random weights and the SentencePiece vocabulary. The params
section `model` (which model, and how texts are cut to its input length) is read here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from transformers import AutoConfig

from stages import common


@dataclass(frozen=True)
class ModelParams:
    name: str
    max_length: Annotated[int, common.Range(8, why="[CLS] ... [SEP] around a few tokens of text")]
    truncation: Literal["head", "head_tail"]  # what a text longer than max_length keeps (stages/text.py)
    freeze_layers: Annotated[int, common.NON_NEGATIVE]  # embeddings + this many bottom layers stay fixed
    cache_frozen: bool  # run the frozen part once per text (stages/frozen.py); false: every step

    def __post_init__(self) -> None:
        common.check_ranges(self, "model")


def resolve_device(device: str, key: str) -> str:
    """A `device` param (`key` names it) -> "cuda" or "cpu"; CUDA without a GPU fails with what to do."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key} is cuda but torch sees no GPU (torch.cuda.is_available() is False): "
                           f"install a CUDA build of torch, or set {key}: auto or cpu")
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def device_args(device: str, key: str) -> dict[str, bool]:
    """TrainingArguments for where the encoder trains: fp32 with deterministic kernels on CPU (same
    seed => same metrics); AMP on CUDA, bf16 where supported, else fp16."""
    cuda = resolve_device(device, key) == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return {"full_determinism": not cuda, "use_cpu": not cuda, "bf16": bf16, "fp16": cuda and not bf16}


def load_encoder(auto_cls: Any, source: str, tokenizer: Any, meta: dict, seed: int, **kwargs: Any) -> Any:
    """`auto_cls` (e.g. AutoModelForMaskedLM) from `source` for the tokenizer described by `meta`
    (models/tokenizer/tokenizer_meta.json); `seed` draws every weight the checkpoint lacks."""
    torch.manual_seed(seed)
    if meta["mode"] == "scratch":
        config = AutoConfig.from_pretrained(source, **kwargs)
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        return auto_cls.from_config(config)
    # safetensors only (a pickled .bin could run code on load); remote code is never trusted
    model = auto_cls.from_pretrained(source, use_safetensors=True, **kwargs)
    if meta["new_tokens"]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows set just below
        init_new_token_embeddings(model, tokenizer, meta["new_tokens"])
    return model


def init_new_token_embeddings(model: Any, tokenizer: Any, new_tokens: dict[str, list[int]]) -> None:
    """Each added token's embedding row starts as the mean of the rows it used to split into."""
    weight = model.get_input_embeddings().weight
    with torch.no_grad():
        for token, sub_ids in new_tokens.items():
            weight[tokenizer.convert_tokens_to_ids(token)] = weight[sub_ids].mean(dim=0)


# Options transformers keeps from the load call and writes back into tokenizer_config.json:
# `local_files_only` is forced true under HF_HUB_OFFLINE=1 (as `make` sets it), so the saved bytes,
# and every DVC hash downstream, would depend on the environment the stage ran in.
LOAD_TIME_KWARGS = ("local_files_only",)


def save_tokenizer(tok: Any, out_dir: Any) -> None:
    """`tok.save_pretrained(out_dir)` without the load-time options above: same bytes in any environment."""
    for key in LOAD_TIME_KWARGS:
        tok.init_kwargs.pop(key, None)
    tok.save_pretrained(out_dir)
