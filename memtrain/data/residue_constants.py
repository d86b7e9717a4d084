"""Per-residue-type atom constants of AlphaFold 2 (its ``alphafold/common/residue_constants.py``):
the atom37 layout, the atoms that define each chi angle, and which chi angles are pi-periodic.

Residue types are indexed in AlphaFold's ``restype_order`` (``ARNDCQEGHILKMFPSTWYV``, 20 = unknown);
atoms in the atom37 order (every heavy atom name that occurs in the 20 amino acids, plus OXT).
"""

from __future__ import annotations

import numpy as np

RESTYPES = "ARNDCQEGHILKMFPSTWYV"
RESTYPE_3 = (
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
    "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL",
)

ATOM_TYPES = (
    "N", "CA", "C", "CB", "O", "CG", "CG1", "CG2", "OG", "OG1", "SG", "CD", "CD1", "CD2", "ND1", "ND2",
    "OD1", "OD2", "SD", "CE", "CE1", "CE2", "CE3", "NE", "NE1", "NE2", "OE1", "OE2", "CH2", "NH1", "NH2",
    "OH", "CZ", "CZ2", "CZ3", "NZ", "OXT",
)
ATOM_ORDER = {name: i for i, name in enumerate(ATOM_TYPES)}
NUM_ATOM_TYPES = len(ATOM_TYPES)  # 37

# Atoms renamed when read from a structure: selenomethionine's selenium stands for methionine's SD
# (AlphaFold's mmcif parsing reads MSE as MET).
ATOM_RENAMES = {("MSE", "SE"): "SD"}

# chi1..chi4: the four atoms whose dihedral angle each chi is (AlphaFold's chi_angles_atoms).
CHI_ANGLES_ATOMS = {
    "ALA": [],
    "ARG": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "NE"], ["CG", "CD", "NE", "CZ"]],
    "ASN": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "OD1"]],
    "ASP": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "OD1"]],
    "CYS": [["N", "CA", "CB", "SG"]],
    "GLN": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "GLU": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "OE1"]],
    "GLY": [],
    "HIS": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "ND1"]],
    "ILE": [["N", "CA", "CB", "CG1"], ["CA", "CB", "CG1", "CD1"]],
    "LEU": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "LYS": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"], ["CB", "CG", "CD", "CE"], ["CG", "CD", "CE", "NZ"]],
    "MET": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "SD"], ["CB", "CG", "SD", "CE"]],
    "PHE": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "PRO": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD"]],
    "SER": [["N", "CA", "CB", "OG"]],
    "THR": [["N", "CA", "CB", "OG1"]],
    "TRP": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "TYR": [["N", "CA", "CB", "CG"], ["CA", "CB", "CG", "CD1"]],
    "VAL": [["N", "CA", "CB", "CG1"]],
}

# chi angles that a rotation by pi leaves unchanged (symmetric side chains): ASP chi2, GLU chi3,
# PHE chi2, TYR chi2. Rows in restype order, the last (unknown) all zero.
CHI_PI_PERIODIC = np.zeros((21, 4), dtype=np.float32)
for _name, _chi in (("ASP", 1), ("GLU", 2), ("PHE", 1), ("TYR", 1)):
    CHI_PI_PERIODIC[RESTYPE_3.index(_name), _chi] = 1.0


def _chi_tables() -> tuple[np.ndarray, np.ndarray]:
    """(chi atom indices [21, 4, 4] into atom37, chi angle mask [21, 4]); undefined chis point at
    atom 0 with mask 0 (AlphaFold's get_chi_atom_indices and chi_angles_mask, unknown appended)."""
    indices = np.zeros((21, 4, 4), dtype=np.int64)
    mask = np.zeros((21, 4), dtype=np.float32)
    for r, name in enumerate(RESTYPE_3):
        for c, atoms in enumerate(CHI_ANGLES_ATOMS[name]):
            indices[r, c] = [ATOM_ORDER[a] for a in atoms]
            mask[r, c] = 1.0
    return indices, mask


CHI_ATOM_INDICES, CHI_ANGLES_MASK = _chi_tables()
