"""Pipeline stages of the GPT decoder (the ModelSpec's `pipeline_fn`).

The L blocks are split evenly over the pipeline's stages, in order: stage s of N holds blocks
[s L/N, (s+1) L/N). The first stage also holds the token embedding, the last the final norm and
the output head, as in GPipe (Huang et al. 2019, sec. 2) and Megatron-LM (Narayanan et al. 2021,
sec. 2.2). The stages reuse the model's own modules, so their parameters keep the model's names
(`layers.3.attention.wq.weight`): a checkpoint is the same whatever the pipeline degree.

# DISCREPANCY: the split counts blocks only; the first and last stages also carry the embedding
# and the head (V x D each), which for a large vocabulary makes them the heaviest stages.
"""

from __future__ import annotations

import torch
from torch import nn

from memtrain.models.gpt.loss import DeferredLogits, LinearCrossEntropyHead
from memtrain.models.gpt.model import GPT, rotary_tables


class GPTStage(nn.Module):
    """One stage: tokens [B, S] (int64) -> h [B, S, D] on the first stage, h -> h in the middle,
    h -> logits [B, S, V] on the last (a one-stage pipeline is the whole model). With the fused loss
    head (memtrain.models.gpt.loss) the last stage returns the normalized h [B, S, D]: pipelining
    passes tensors only, and `loss_outputs` gives the loss the head's DeferredLogits."""

    def __init__(self, model: GPT, layer_ids: range, first: bool, last: bool):
        super().__init__()
        self.head_dim, self.rope_theta = model.head_dim, model.rope_theta
        self.tok_embeddings = model.tok_embeddings if first else None
        # keyed by the block's index in the whole model, which keeps the parameter names
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in layer_ids})
        self.norm = model.norm if last else None
        self.output = model.output if last else None
        self.fused_head = last and isinstance(model.output, LinearCrossEntropyHead)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tok_embeddings is not None:
            x = self.tok_embeddings(x)
        cos, sin = rotary_tables(x.shape[1], self.head_dim, self.rope_theta, x.device)
        for layer in self.layers.values():
            x = layer(x, cos, sin)
        if self.output is not None:
            x = self.norm(x)
            if not self.fused_head:
                x = self.output(x)
        return x

    def loss_outputs(self, outputs: torch.Tensor) -> torch.Tensor | DeferredLogits:
        """What the loss takes from the last stage's outputs: the fused head's DeferredLogits of h,
        or the logits as they are."""
        return self.output(outputs) if self.fused_head else outputs


def pipeline_stages(model: GPT, stage_ids: list[int], num_stages: int) -> list[GPTStage]:
    """The stages `stage_ids` (of `num_stages`) of `model`, sharing its modules."""
    n_layers = len(model.layers)
    if n_layers % num_stages:
        raise ValueError(f"{n_layers} blocks do not split evenly into {num_stages} pipeline stages")
    per_stage = n_layers // num_stages
    return [GPTStage(model, range(s * per_stage, (s + 1) * per_stage), first=s == 0, last=s == num_stages - 1)
            for s in stage_ids]
