"""Forward FLOPs of AlphaFold 2's Evoformer block and of everything outside the blocks, counted
from the model config (memtrain.models.flops and the cost model of `memtrain plan` read them)."""

from __future__ import annotations

from omegaconf import DictConfig


def _pair_flops(n: int, cz: int, cmul: int, hz: int, hcz: int, tn: int) -> int:
    """Forward FLOPs of one block's pair modules on one [N, N, C_z] representation (Algorithms 11-15)."""
    nn = n * n
    return (
        2 * (2 * nn * cz * (4 * cmul + cz) + 2 * nn * n * cmul + 2 * nn * cmul * cz)  # triangle mult. x2
        + 2 * (2 * nn * cz * (5 * hcz + hz) + 2 * 2 * nn * n * hcz)  # triangle attention x2
        + 2 * 2 * nn * cz * tn * cz  # pair transition
    )


def _msa_block_flops(n: int, s: int, cm: int, cz: int, hm: int, hcm: int, co: int, tn: int,
                     column: int) -> int:
    """Forward FLOPs of one block's MSA modules (Algorithms 7-10) on [S, N, C_m]; `column`: the
    column attention's."""
    sn, nn = s * n, n * n
    return (
        2 * sn * cm * 5 * hcm + 2 * nn * cz * hm + 2 * 2 * s * nn * hcm  # row attention, its pair bias
        + column
        + 2 * 2 * sn * cm * tn * cm  # MSA transition
        + 2 * 2 * sn * cm * co + 2 * nn * s * co * co + 2 * nn * co * co * cz  # outer product mean
    )


def alphafold_forward_flops(cfg: DictConfig) -> tuple[float, float, float]:
    """(one Evoformer block, everything outside the blocks, 0: no attention core counted apart)
    forward FLOPs of one micro-batch (ModelSpec.forward_flops),
    counting matmuls and einsums (2 FLOPs per multiply-add), B crops of N residues, S MSA rows and
    T template rows (Supplement Algorithms 7-15 for the block; 20-23 and the heads outside).

    The extra-MSA stack (E = data.max_extra_msa rows at C_e, global column attention) and the
    template pair stack (T pair representations at C_t) are blocks too, split by DAP and recomputed
    under checkpointing like the Evoformer's: their FLOPs are spread over the Evoformer blocks. The
    template embedders and point-wise attention run replicated: outside."""
    m = cfg.model
    b, n, s = cfg.trainer.micro_batch_size, cfg.data.crop_size, cfg.data.max_msa
    e = cfg.data.get("max_extra_msa", 0) if m.get("n_extra_msa_blocks", 0) > 0 else 0
    t = cfg.data.get("max_templates", 0) if m.get("templates", False) else 0
    s = s + t  # the template torsion-angle rows join the MSA
    cm, cz, cs = m.c_m, m.c_z, m.c_s
    hm, hz = m.n_heads_msa, m.n_heads_pair
    hcm, hcz = hm * m.c_hidden_msa_att, hz * m.c_hidden_pair_att
    co, cmul, tn = m.c_hidden_opm, m.c_hidden_mul, m.transition_n
    sn, nn = s * n, n * n
    column = 2 * sn * cm * 5 * hcm + 2 * 2 * n * s * s * hcm  # column attention: projections, logits and values
    block = _msa_block_flops(n, s, cm, cz, hm, hcm, co, tn, column) + _pair_flops(n, cz, cmul, hz, hcz, tn)
    stacks, stack_outside = 0, 0
    if e > 0:
        ce, hce = m.c_e, hm * m.c_hidden_extra_msa_att
        ch = m.c_hidden_extra_msa_att
        # global column attention: the averaged query, k and v (one head each), gate and output, logits and values
        column = 2 * n * ce * hce + 2 * 2 * e * n * ce * ch + 2 * 2 * e * n * ce * hce + 2 * 2 * n * e * hce
        stacks += m.n_extra_msa_blocks * (_msa_block_flops(n, e, ce, cz, hm, hce, co, tn, column)
                                          + _pair_flops(n, cz, cmul, hz, hcz, tn))
        stack_outside += 2 * e * n * 25 * ce  # extra-MSA embedder
    if t > 0:
        ct, hct = m.c_t, m.n_heads_template * m.c_hidden_template_att
        hcp = m.n_heads_template_pointwise * m.c_hidden_template_pointwise
        stacks += m.n_template_blocks * t * _pair_flops(n, ct, m.c_hidden_template_mul, m.n_heads_template, hct,
                                                        m.template_transition_n)
        stack_outside += (
            2 * t * nn * 88 * ct  # pair embedder
            + 2 * nn * cz * hcp + 2 * 2 * t * nn * ct * hcp + 2 * 2 * nn * t * hcp + 2 * nn * hcp * cz  # point-wise
            + 2 * t * n * (57 * cm + cm * cm)  # angle embedder
        )
    block += stacks / m.n_blocks
    ipa_h, ipa_c, layers = m.n_heads_ipa, m.c_hidden_ipa, m.n_structure_layers
    ipa = 2 * nn * cz * ipa_h + 2 * 2 * nn * ipa_h * (ipa_c + 3 * 4 + 3 * 8) + 2 * nn * ipa_h * cz + 2 * n * cs * cs * 8
    outside = (
        2 * nn * (2 * 32 + 1) * cz  # relative position embedding
        + layers * ipa
        + 2 * nn * cz * 64 + 2 * (s - t) * n * cm * 23  # distogram and masked-MSA heads
        + stack_outside
    )
    return float(b * block), float(b * outside), 0.0
