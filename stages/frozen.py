"""Freeze the bottom `model.freeze_layers` encoder layers and train on their cached outputs.

A frozen layer's output never changes, so running it every epoch (forward, and backward through
it to reach the layers above) repeats the same work. Here the embeddings and the bottom N layers
run once per example, in eval mode (no dropout) and without gradients; training, validation and
SWA then see a model whose embeddings module passes the cached hidden states through and whose
encoder holds only the top layers. That model shares its parameters with the full one, so when
`full_model` puts the frozen part back, the classifier that `evaluate` loads is the whole model
(frozen bottom + trained top) and recomputing the bottom gives the same logits (tested).

Works for encoders with `base_model.encoder.layer` (BERT, RoBERTa, MPNet, ELECTRA, XLM-R, ...)
or `base_model.transformer.layer` (DistilBERT), whose layers after the last need no final norm.

Used by: stages/train.py (param `model.freeze_layers`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from stages import common


class PassThrough(nn.Module):
    """Stands in for the embeddings module: the cached hidden states arrive as `inputs_embeds`."""

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):
        return inputs_embeds


def _stack(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(base model, the module holding its `layer` ModuleList); other architectures fail clearly."""
    base = model.base_model
    for name in ("encoder", "transformer"):
        holder = getattr(base, name, None)
        if isinstance(getattr(holder, "layer", None), nn.ModuleList) and hasattr(base, "embeddings"):
            return base, holder
    raise common.ParamsError(f"model.freeze_layers needs a BERT-style encoder (embeddings + encoder.layer); "
                             f"{type(base).__name__} has none: set model.freeze_layers: 0")


def check_depth(model: nn.Module, n: int) -> None:
    _, holder = _stack(model)
    if n >= len(holder.layer):
        raise common.ParamsError(f"model.freeze_layers is {n} but the encoder has {len(holder.layer)} layers: "
                                 f"at most {len(holder.layer) - 1} can be frozen (the top one must train)")


class FrozenBottom:
    """Freeze `model`'s embeddings and bottom `n` layers (no gradients, no dropout) in place; `top()` is
    the model to train on cached states (shared weights), `full()` restores the whole model."""

    def __init__(self, model: nn.Module, n: int):
        check_depth(model, n)
        self.model, self.n = model, n
        self.base, self.holder = _stack(model)
        self.embeddings = self.base.embeddings
        self.layers = list(self.holder.layer)
        # The whole encoder is frozen but its top layers: what it shares between layers (MPNet's relative
        # position bias) feeds the frozen ones too, and training it would make the cached states stale.
        for module in [self.embeddings, self.holder]:
            module.requires_grad_(False)
        for layer in self.layers[n:]:
            layer.requires_grad_(True)
        for module in [self.embeddings, *self.layers[:n]]:
            for dropout in (m for m in module.modules() if isinstance(m, nn.Dropout)):
                dropout.p = 0.0  # a fixed function of the text, in train mode too (model.cache_frozen: false)

    @torch.no_grad()
    def encode(self, input_ids: list[list[int]], batch_size: int, device: torch.device) -> list[torch.Tensor]:
        """Hidden states after the frozen layers, one (length, hidden) float32 tensor per text, on CPU.

        Texts run in batches of similar length (less padding); padded positions are masked, so a
        text's states do not depend on its batch, and only its own positions are kept."""
        self.full()
        was_training = self.model.training
        self.holder.layer = nn.ModuleList(self.layers[: self.n])
        self.model.eval()
        order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
        out: list[torch.Tensor | None] = [None] * len(input_ids)
        try:
            for start in tqdm(range(0, len(order), batch_size), desc="caching frozen layers", unit="batch"):
                idx = order[start : start + batch_size]
                ids, mask = pad([torch.tensor(input_ids[i]) for i in idx], 0)
                states = self.base(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
                for row, i in enumerate(idx):
                    out[i] = states[row, : len(input_ids[i])].float().cpu()
        finally:
            self.holder.layer = nn.ModuleList(self.layers)
            self.model.train(was_training)
        return out

    def top(self) -> nn.Module:
        """The model to train: embeddings pass the cache through, only the top layers remain."""
        self.base.embeddings = PassThrough()
        self.holder.layer = nn.ModuleList(self.layers[self.n :])
        return self.model

    def full(self) -> nn.Module:
        """The whole model again (frozen bottom + the trained top layers and head)."""
        self.base.embeddings = self.embeddings
        self.holder.layer = nn.ModuleList(self.layers)
        return self.model


def pad(seqs: list[torch.Tensor], value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-d (ids) or 2-d (states) tensors to the longest; the attention mask marks real positions."""
    longest = max(len(s) for s in seqs)
    padded = torch.full((len(seqs), longest, *seqs[0].shape[1:]), value, dtype=seqs[0].dtype)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for row, s in enumerate(seqs):
        padded[row, : len(s)] = s
        mask[row, : len(s)] = 1
    return padded, mask


class CachedDataset(torch.utils.data.Dataset):
    """Cached hidden states with their labels, as the Trainer's train or eval dataset."""

    def __init__(self, states: list[torch.Tensor], labels: list[int]):
        self.states, self.labels = states, labels

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"inputs_embeds": self.states[i], "labels": self.labels[i]}


def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Dynamic padding of a batch of cached states, as DataCollatorWithPadding does for token ids."""
    states, mask = pad([r["inputs_embeds"] for r in rows], 0.0)
    return {"inputs_embeds": states, "attention_mask": mask, "labels": torch.tensor([r["labels"] for r in rows])}
