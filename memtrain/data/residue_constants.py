"""Per-residue-type atom constants of AlphaFold 2 (its ``alphafold/common/residue_constants.py``)
as the data pipeline reads them: the atom37 layout, the atoms that define each chi angle, and which
chi angles are pi-periodic. The tables themselves live once, in
memtrain.protein.residue_constants (which the model's all-atom code also reads); this
module adds what only reading structures needs.

Residue types are indexed in AlphaFold's ``restype_order`` (``ARNDCQEGHILKMFPSTWYV``, 20 = unknown);
atoms in the atom37 order (every heavy atom name that occurs in the 20 amino acids, plus OXT).
"""

from __future__ import annotations

import numpy as np

from memtrain.protein.residue_constants import (  # noqa: F401  (re-exported)
    ATOM_ORDER,
    ATOM_TYPES,
    CHI_ANGLES_ATOMS,
    CHI_ANGLES_MASK,
    CHI_PI_PERIODIC,
    RESNAMES,
    RESTYPES,
)

RESTYPE_3 = RESNAMES[:20]
NUM_ATOM_TYPES = len(ATOM_TYPES)  # 37

# Atoms renamed when read from a structure: selenomethionine's selenium stands for methionine's SD
# (AlphaFold's mmcif parsing reads MSE as MET).
ATOM_RENAMES = {("MSE", "SE"): "SD"}


def _chi_atom_indices() -> np.ndarray:
    """Chi atom indices [21, 4, 4] into atom37; undefined chis point at atom 0 (their mask,
    CHI_ANGLES_MASK, is 0) (AlphaFold's get_chi_atom_indices, unknown appended)."""
    indices = np.zeros((21, 4, 4), dtype=np.int64)
    for r, name in enumerate(RESTYPE_3):
        for c, atoms in enumerate(CHI_ANGLES_ATOMS[name]):
            indices[r, c] = [ATOM_ORDER[a] for a in atoms]
    return indices


CHI_ATOM_INDICES = _chi_atom_indices()
