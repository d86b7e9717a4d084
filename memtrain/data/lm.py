"""Token streams for language models, cut into fixed windows and served as deterministic
micro-batches: micro-batch i depends only on (seed, i), so a resumed run sees exactly the batches
an uninterrupted run would have seen, with no loader state to save."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from memtrain.config.errors import as_enum
from memtrain.config.schema import DataSource
from memtrain.data.errors import DataFormatError


class PackedWindows:
    """A 1-D token stream cut into non-overlapping windows of seq_len + 1 tokens.

    batch(i, B) returns (inputs [B, S], targets [B, S]) where targets are inputs shifted by one.
    Windows are visited in a fresh random order each epoch (a permutation seeded by seed, epoch).
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, seed: int, name: str):
        n_windows = (tokens.numel() - 1) // seq_len
        if n_windows < 1:
            raise DataFormatError(
                f"{name}: {tokens.numel()} tokens are fewer than one window of data.seq_len={seq_len} + 1"
            )
        self.windows = tokens[: n_windows * seq_len + 1]
        self.seq_len, self.seed, self.num_windows = seq_len, seed, n_windows
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _window_ids(self, start: int, count: int) -> list[int]:
        ids = []
        for sample in range(start, start + count):
            epoch, pos = divmod(sample, self.num_windows)
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._epoch, self._order = epoch, torch.randperm(self.num_windows, generator=g)
            ids.append(int(self._order[pos]))
        return ids

    def batch(self, index: int, micro_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.tensor(self._window_ids(index * micro_batch_size, micro_batch_size)) * self.seq_len
        rows = torch.stack([self.windows[s : s + self.seq_len + 1] for s in starts.tolist()])
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def protein_windows(cfg: DictConfig) -> PackedWindows:
    """Real protein sequences under data.root, tokenized per residue and packed with bos/eos."""
    from memtrain.data.sequences import ProteinTokenizer, default_protein_root, load_protein_sequences

    root = Path(cfg.data.root) if cfg.data.root else default_protein_root()
    tokenizer = ProteinTokenizer()
    sequences = load_protein_sequences(root, sources=tuple(cfg.data.formats))
    ids = [i for seq in sequences for i in tokenizer.encode(seq)]
    return PackedWindows(torch.tensor(ids, dtype=torch.long), cfg.data.seq_len, cfg.trainer.seed, str(root))


def synthetic_windows(cfg: DictConfig) -> PackedWindows:
    """Uniformly random tokens over the model's vocabulary (for benchmarks: no I/O, fixed cost)."""
    g = torch.Generator().manual_seed(cfg.trainer.seed)
    tokens = torch.randint(0, cfg.model.vocab_size, (cfg.data.num_synthetic_tokens,), generator=g)
    return PackedWindows(tokens, cfg.data.seq_len, cfg.trainer.seed, "synthetic")


def build_lm_data(cfg: DictConfig) -> PackedWindows:
    source = as_enum(cfg.data.source, DataSource)
    return {DataSource.protein: protein_windows, DataSource.synthetic: synthetic_windows}[source](cfg)
