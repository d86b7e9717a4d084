"""The fast path's compilation step: regional torch.compile of the model's repeated blocks.

Each block is compiled in place (`nn.Module.compile`, which keeps parameter names and state-dict
keys), as torchtitan does: one compiled graph is reused by every block of the same shape, so
compilation costs one block, not the whole model. It is applied in the fixed order tensor/axial
parallelism -> activation checkpointing -> compile -> FSDP (TorchStrategy), so the compiled
region includes the checkpoint wrapper's recomputation and FSDP's hooks stay outside it.

Already on the fast path elsewhere: fused AdamW wherever torch has the kernel, CUDA and CPU
(optim.builder.fused_supported), multi-tensor steps of memtrain's own optimizers, the decoder's
fused chunked linear cross entropy (models.gpt.loss),
SDPA attention (the GPT's F.scaled_dot_product_attention picks flash/cuDNN kernels on CUDA;
AlphaFold's model.attention_backend=sdpa), non-blocking host-to-device copies (trainer.to_device).
CUDA graphs (mode="reduce-overhead") are not used: with per-block regions, activation
checkpointing's recomputation and FSDP's all-gathers between regions, the captured graphs would
each hold private memory pools for their static inputs and outputs, which costs the memory this
project saves, and AlphaFold's crops change shape.
"""

from __future__ import annotations

from torch import nn


def compile_blocks(blocks: nn.ModuleList) -> None:
    for block in blocks:
        block.compile()
