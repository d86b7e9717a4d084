"""Residue constants for the all-atom structure (Supplement 1.8.3-1.8.5, Tables 2-3; Algorithm 24).

Source: the tables below are data transcribed from AlphaFold's `alphafold/common/residue_constants.py`
(DeepMind, Apache License 2.0; https://github.com/google-deepmind/alphafold), whose idealised
geometry is that of Engh & Huber (1991, Acta Cryst. A47, 392-400; 2001 update). They are:

- `RIGID_GROUP_ATOM_POSITIONS`: each heavy atom of each residue type, the rigid group it belongs to
  and its position (Angstrom) in that group's frame ("literature positions", Supplement Table 3);
- `CHI_ANGLES_ATOMS`: the four atoms that define each side-chain torsion chi1..chi4;
- `PI_PERIODIC_CHIS`: the chi angles that a rotation by pi maps onto themselves (symmetric rings and
  carboxylates, Supplement 1.9.1);
- `ATOM14_NAMES`: the compact per-residue-type atom order ("atom14"), and `ATOM_TYPES`, the 37
  atom names of the residue-independent layout ("atom37");
- `RENAMING_SWAPS`: atoms whose names are ambiguous by symmetry (Supplement 1.8.5).

Everything after the tables is derived from them here, by the same construction as AlphaFold's
`_make_rigid_group_constants`, as numpy arrays indexed by residue type (0..19 in the order
`RESTYPES`, 20 = unknown; geometry in float64, masks in float32):

    ATOM14_MASK              [21, 14]        1 where the residue type has that atom14 slot
    ATOM14_TO_GROUP          [21, 14]        rigid group (0..7) of each atom
    ATOM14_LITERATURE        [21, 14, 3]     literature position in the atom's group frame
    DEFAULT_FRAMES           [21, 8, 4, 4]   each group's frame in the frame of the group before it
                                             (chi2..4: the previous chi group; others: the backbone)
    ATOM14_TO_ATOM37         [21, 14]        atom37 index of each atom14 slot (0 where empty)
    ATOM37_MASK              [21, 37]
    CHI_ANGLES_MASK          [21, 4]         which chi angles the residue type has
    CHI_PI_PERIODIC          [21, 4]         which of them are pi-periodic
    CHI_ATOM14_INDICES       [21, 4, 4]      the atom14 indices of the four atoms of each chi
    GROUP_BASE_ATOM14        [21, 8, 3]      the atoms (point on -x, origin, point in the xy plane)
                                             that define each group's frame from coordinates
    GROUP_MASK               [21, 8]         groups that have a frame defined by atoms (0, 3, 4..)
    GROUP_IS_AMBIGUOUS       [21, 8]         the last chi group of ASP, GLU, PHE, TYR
    ATOM14_IS_AMBIGUOUS      [21, 14]
    ATOM14_SWAP              [21, 14]        the atom14 permutation that renames the ambiguous atoms
    BACKBONE_LITERATURE      [21, 3, 3]      N, CA, C in the backbone frame; unknown: alanine's

Rigid groups (Supplement Table 2): 0 backbone, 1 pre-omega (no heavy atoms), 2 phi (no heavy
atoms), 3 psi (O), 4..7 chi1..chi4.
"""

from __future__ import annotations

import numpy as np

RESTYPES = "ARNDCQEGHILKMFPSTWYV"  # AlphaFold's restype order; 20 = unknown ('X')
RESTYPE_1TO3 = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU", "G": "GLY",
    "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO", "S": "SER",
    "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}
RESNAMES = tuple(RESTYPE_1TO3[r] for r in RESTYPES) + ("UNK",)
NUM_RESTYPES = 21  # 20 + unknown
NUM_GROUPS = 8
UNK = 20
GLY = RESTYPES.index("G")

# --- source tables (AlphaFold residue_constants.py) ---------------------------------------------

CHI_ANGLES_ATOMS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "ALA": (),
    # chi5 of arginine is always 0 +- 5 degrees and is not modelled
    "ARG": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "NE"), ("CG", "CD", "NE", "CZ")),
    "ASN": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "OD1")),
    "ASP": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "OD1")),
    "CYS": (("N", "CA", "CB", "SG"),),
    "GLN": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "OE1")),
    "GLU": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "OE1")),
    "GLY": (),
    "HIS": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "ND1")),
    "ILE": (("N", "CA", "CB", "CG1"), ("CA", "CB", "CG1", "CD1")),
    "LEU": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "LYS": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "CE"), ("CG", "CD", "CE", "NZ")),
    "MET": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "SD"), ("CB", "CG", "SD", "CE")),
    "PHE": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "PRO": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD")),
    "SER": (("N", "CA", "CB", "OG"),),
    "THR": (("N", "CA", "CB", "OG1"),),
    "TRP": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "TYR": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "VAL": (("N", "CA", "CB", "CG1"),),
}

# chi angles that are pi-periodic (the others: none)
PI_PERIODIC_CHIS = {"ASP": (0, 1, 0, 0), "GLU": (0, 0, 1, 0), "PHE": (0, 1, 0, 0), "TYR": (0, 1, 0, 0)}

# (atom name, rigid group, position in the group's frame in Angstrom). The x axis of a group's
# frame runs along its rotation axis, ending at the origin; the y axis puts the atom that defines
# the torsion (the last of its CHI_ANGLES_ATOMS) in the xy plane with y > 0.
RIGID_GROUP_ATOM_POSITIONS: dict[str, tuple[tuple[str, int, tuple[float, float, float]], ...]] = {
    "ALA": (
        ("N", 0, (-0.525, 1.363, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.529, -0.774, -1.205)), ("O", 3, (0.627, 1.062, 0.000)),
    ),
    "ARG": (
        ("N", 0, (-0.524, 1.362, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.524, -0.778, -1.209)), ("O", 3, (0.626, 1.062, 0.000)), ("CG", 4, (0.616, 1.390, -0.000)),
        ("CD", 5, (0.564, 1.414, 0.000)), ("NE", 6, (0.539, 1.357, -0.000)), ("NH1", 7, (0.206, 2.301, 0.000)),
        ("NH2", 7, (2.078, 0.978, -0.000)), ("CZ", 7, (0.758, 1.093, -0.000)),
    ),
    "ASN": (
        ("N", 0, (-0.536, 1.357, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.531, -0.787, -1.200)), ("O", 3, (0.625, 1.062, 0.000)), ("CG", 4, (0.584, 1.399, 0.000)),
        ("ND2", 5, (0.593, -1.188, 0.001)), ("OD1", 5, (0.633, 1.059, 0.000)),
    ),
    "ASP": (
        ("N", 0, (-0.525, 1.362, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.527, 0.000, -0.000)),
        ("CB", 0, (-0.526, -0.778, -1.208)), ("O", 3, (0.626, 1.062, -0.000)), ("CG", 4, (0.593, 1.398, -0.000)),
        ("OD1", 5, (0.610, 1.091, 0.000)), ("OD2", 5, (0.592, -1.101, -0.003)),
    ),
    "CYS": (
        ("N", 0, (-0.522, 1.362, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.524, 0.000, 0.000)),
        ("CB", 0, (-0.519, -0.773, -1.212)), ("O", 3, (0.625, 1.062, -0.000)), ("SG", 4, (0.728, 1.653, 0.000)),
    ),
    "GLN": (
        ("N", 0, (-0.526, 1.361, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.526, 0.000, 0.000)),
        ("CB", 0, (-0.525, -0.779, -1.207)), ("O", 3, (0.626, 1.062, -0.000)), ("CG", 4, (0.615, 1.393, 0.000)),
        ("CD", 5, (0.587, 1.399, -0.000)), ("NE2", 6, (0.593, -1.189, -0.001)), ("OE1", 6, (0.634, 1.060, 0.000)),
    ),
    "GLU": (
        ("N", 0, (-0.528, 1.361, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.526, -0.000, -0.000)),
        ("CB", 0, (-0.526, -0.781, -1.207)), ("O", 3, (0.626, 1.062, 0.000)), ("CG", 4, (0.615, 1.392, 0.000)),
        ("CD", 5, (0.600, 1.397, 0.000)), ("OE1", 6, (0.607, 1.095, -0.000)), ("OE2", 6, (0.589, -1.104, -0.001)),
    ),
    "GLY": (
        ("N", 0, (-0.572, 1.337, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.517, -0.000, -0.000)),
        ("O", 3, (0.626, 1.062, -0.000)),
    ),
    "HIS": (
        ("N", 0, (-0.527, 1.360, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.525, 0.000, 0.000)),
        ("CB", 0, (-0.525, -0.778, -1.208)), ("O", 3, (0.625, 1.063, 0.000)), ("CG", 4, (0.600, 1.370, -0.000)),
        ("CD2", 5, (0.889, -1.021, 0.003)), ("ND1", 5, (0.744, 1.160, -0.000)), ("CE1", 5, (2.030, 0.851, 0.002)),
        ("NE2", 5, (2.145, -0.466, 0.004)),
    ),
    "ILE": (
        ("N", 0, (-0.493, 1.373, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.527, -0.000, -0.000)),
        ("CB", 0, (-0.536, -0.793, -1.213)), ("O", 3, (0.627, 1.062, -0.000)), ("CG1", 4, (0.534, 1.437, -0.000)),
        ("CG2", 4, (0.540, -0.785, -1.199)), ("CD1", 5, (0.619, 1.391, 0.000)),
    ),
    "LEU": (
        ("N", 0, (-0.520, 1.363, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.522, -0.773, -1.214)), ("O", 3, (0.625, 1.063, -0.000)), ("CG", 4, (0.678, 1.371, 0.000)),
        ("CD1", 5, (0.530, 1.430, -0.000)), ("CD2", 5, (0.535, -0.774, 1.200)),
    ),
    "LYS": (
        ("N", 0, (-0.526, 1.362, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.526, 0.000, 0.000)),
        ("CB", 0, (-0.524, -0.778, -1.208)), ("O", 3, (0.626, 1.062, -0.000)), ("CG", 4, (0.619, 1.390, 0.000)),
        ("CD", 5, (0.559, 1.417, 0.000)), ("CE", 6, (0.560, 1.416, 0.000)), ("NZ", 7, (0.554, 1.387, 0.000)),
    ),
    "MET": (
        ("N", 0, (-0.521, 1.364, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.525, 0.000, 0.000)),
        ("CB", 0, (-0.523, -0.776, -1.210)), ("O", 3, (0.625, 1.062, -0.000)), ("CG", 4, (0.613, 1.391, -0.000)),
        ("SD", 5, (0.703, 1.695, 0.000)), ("CE", 6, (0.320, 1.786, -0.000)),
    ),
    "PHE": (
        ("N", 0, (-0.518, 1.363, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.524, 0.000, -0.000)),
        ("CB", 0, (-0.525, -0.776, -1.212)), ("O", 3, (0.626, 1.062, -0.000)), ("CG", 4, (0.607, 1.377, 0.000)),
        ("CD1", 5, (0.709, 1.195, -0.000)), ("CD2", 5, (0.706, -1.196, 0.000)), ("CE1", 5, (2.102, 1.198, -0.000)),
        ("CE2", 5, (2.098, -1.201, -0.000)), ("CZ", 5, (2.794, -0.003, -0.001)),
    ),
    "PRO": (
        ("N", 0, (-0.566, 1.351, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.527, -0.000, 0.000)),
        ("CB", 0, (-0.546, -0.611, -1.293)), ("O", 3, (0.621, 1.066, 0.000)), ("CG", 4, (0.382, 1.445, 0.0)),
        # AlphaFold opened the CB-CG-CD angle of the literature value (0.427, 1.440, 0.0) by 2 degrees by hand
        ("CD", 5, (0.477, 1.424, 0.0)),
    ),
    "SER": (
        ("N", 0, (-0.529, 1.360, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.525, -0.000, -0.000)),
        ("CB", 0, (-0.518, -0.777, -1.211)), ("O", 3, (0.626, 1.062, -0.000)), ("OG", 4, (0.503, 1.325, 0.000)),
    ),
    "THR": (
        ("N", 0, (-0.517, 1.364, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.526, 0.000, -0.000)),
        ("CB", 0, (-0.516, -0.793, -1.215)), ("O", 3, (0.626, 1.062, 0.000)), ("CG2", 4, (0.550, -0.718, -1.228)),
        ("OG1", 4, (0.472, 1.353, 0.000)),
    ),
    "TRP": (
        ("N", 0, (-0.521, 1.363, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.525, -0.000, 0.000)),
        ("CB", 0, (-0.523, -0.776, -1.212)), ("O", 3, (0.627, 1.062, 0.000)), ("CG", 4, (0.609, 1.370, -0.000)),
        ("CD1", 5, (0.824, 1.091, 0.000)), ("CD2", 5, (0.854, -1.148, -0.005)), ("CE2", 5, (2.186, -0.678, -0.007)),
        ("CE3", 5, (0.622, -2.530, -0.007)), ("NE1", 5, (2.140, 0.690, -0.004)), ("CH2", 5, (3.028, -2.890, -0.013)),
        ("CZ2", 5, (3.283, -1.543, -0.011)), ("CZ3", 5, (1.715, -3.389, -0.011)),
    ),
    "TYR": (
        ("N", 0, (-0.522, 1.362, 0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.524, -0.000, -0.000)),
        ("CB", 0, (-0.522, -0.776, -1.213)), ("O", 3, (0.627, 1.062, -0.000)), ("CG", 4, (0.607, 1.382, -0.000)),
        ("CD1", 5, (0.716, 1.195, -0.000)), ("CD2", 5, (0.713, -1.194, -0.001)), ("CE1", 5, (2.107, 1.200, -0.002)),
        ("CE2", 5, (2.104, -1.201, -0.003)), ("OH", 5, (4.168, -0.002, -0.005)), ("CZ", 5, (2.791, -0.001, -0.003)),
    ),
    "VAL": (
        ("N", 0, (-0.494, 1.373, -0.000)), ("CA", 0, (0.000, 0.000, 0.000)), ("C", 0, (1.527, -0.000, -0.000)),
        ("CB", 0, (-0.533, -0.795, -1.213)), ("O", 3, (0.627, 1.062, -0.000)), ("CG1", 4, (0.540, 1.429, -0.000)),
        ("CG2", 4, (0.533, -0.776, 1.203)),
    ),
}

ATOM_TYPES = (
    "N", "CA", "C", "CB", "O", "CG", "CG1", "CG2", "OG", "OG1", "SG", "CD", "CD1", "CD2", "ND1", "ND2", "OD1",
    "OD2", "SD", "CE", "CE1", "CE2", "CE3", "NE", "NE1", "NE2", "OE1", "OE2", "CH2", "NH1", "NH2", "OH", "CZ",
    "CZ2", "CZ3", "NZ", "OXT",
)
ATOM_ORDER = {name: i for i, name in enumerate(ATOM_TYPES)}

ATOM14_NAMES: dict[str, tuple[str, ...]] = {
    "ALA": ("N", "CA", "C", "O", "CB"),
    "ARG": ("N", "CA", "C", "O", "CB", "CG", "CD", "NE", "CZ", "NH1", "NH2"),
    "ASN": ("N", "CA", "C", "O", "CB", "CG", "OD1", "ND2"),
    "ASP": ("N", "CA", "C", "O", "CB", "CG", "OD1", "OD2"),
    "CYS": ("N", "CA", "C", "O", "CB", "SG"),
    "GLN": ("N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "NE2"),
    "GLU": ("N", "CA", "C", "O", "CB", "CG", "CD", "OE1", "OE2"),
    "GLY": ("N", "CA", "C", "O"),
    "HIS": ("N", "CA", "C", "O", "CB", "CG", "ND1", "CD2", "CE1", "NE2"),
    "ILE": ("N", "CA", "C", "O", "CB", "CG1", "CG2", "CD1"),
    "LEU": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2"),
    "LYS": ("N", "CA", "C", "O", "CB", "CG", "CD", "CE", "NZ"),
    "MET": ("N", "CA", "C", "O", "CB", "CG", "SD", "CE"),
    "PHE": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ"),
    "PRO": ("N", "CA", "C", "O", "CB", "CG", "CD"),
    "SER": ("N", "CA", "C", "O", "CB", "OG"),
    "THR": ("N", "CA", "C", "O", "CB", "OG1", "CG2"),
    "TRP": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"),
    "TYR": ("N", "CA", "C", "O", "CB", "CG", "CD1", "CD2", "CE1", "CE2", "CZ", "OH"),
    "VAL": ("N", "CA", "C", "O", "CB", "CG1", "CG2"),
    "UNK": (),
}

# Atoms whose names a symmetry makes ambiguous (Supplement 1.8.5). The lDDT paper also lists LEU,
# VAL and ARG, whose naming the neighbouring atoms resolve.
# The atom14 slots read from a structure file: a residue type's own atoms, and for an unknown
# residue its backbone atoms N, CA, C, O (slots 0-3).
GT_ATOM14_NAMES = {**ATOM14_NAMES, "UNK": ("N", "CA", "C", "O")}

RENAMING_SWAPS = {
    "ASP": {"OD1": "OD2"},
    "GLU": {"OE1": "OE2"},
    "PHE": {"CD1": "CD2", "CE1": "CE2"},
    "TYR": {"CD1": "CD2", "CE1": "CE2"},
}

# --- derived arrays ---------------------------------------------------------------------------------


def _rigid_4x4(ex: np.ndarray, ey: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """The frame with x along ex, y in the (ex, ey) plane (Gram-Schmidt), z = x cross y, origin at
    `translation`, as a 4x4 homogeneous matrix (columns: axes, translation)."""
    ex = ex / np.linalg.norm(ex)
    ey = ey - np.dot(ey, ex) * ex
    ey = ey / np.linalg.norm(ey)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = ex, ey, np.cross(ex, ey), translation
    return m


def _build() -> dict[str, np.ndarray]:
    a = {
        "ATOM14_MASK": np.zeros((NUM_RESTYPES, 14), np.float32),
        "ATOM14_TO_GROUP": np.zeros((NUM_RESTYPES, 14), np.int64),
        "ATOM14_LITERATURE": np.zeros((NUM_RESTYPES, 14, 3), np.float64),
        "DEFAULT_FRAMES": np.tile(np.eye(4), (NUM_RESTYPES, NUM_GROUPS, 1, 1)),
        "ATOM14_TO_ATOM37": np.zeros((NUM_RESTYPES, 14), np.int64),
        "ATOM37_MASK": np.zeros((NUM_RESTYPES, 37), np.float32),
        "CHI_ANGLES_MASK": np.zeros((NUM_RESTYPES, 4), np.float32),
        "CHI_PI_PERIODIC": np.zeros((NUM_RESTYPES, 4), np.float32),
        "CHI_ATOM14_INDICES": np.zeros((NUM_RESTYPES, 4, 4), np.int64),
        "GROUP_BASE_ATOM14": np.zeros((NUM_RESTYPES, NUM_GROUPS, 3), np.int64),
        "GROUP_MASK": np.zeros((NUM_RESTYPES, NUM_GROUPS), np.float32),
        "GROUP_IS_AMBIGUOUS": np.zeros((NUM_RESTYPES, NUM_GROUPS), np.float32),
        "ATOM14_IS_AMBIGUOUS": np.zeros((NUM_RESTYPES, 14), np.float32),
        "ATOM14_SWAP": np.tile(np.arange(14), (NUM_RESTYPES, 1)),
        "BACKBONE_LITERATURE": np.zeros((NUM_RESTYPES, 3, 3), np.float64),
    }
    for restype, resname in enumerate(RESNAMES[:20]):
        names = ATOM14_NAMES[resname]
        index = {name: i for i, name in enumerate(names)}
        positions = {}
        for name, group, position in RIGID_GROUP_ATOM_POSITIONS[resname]:
            i = index[name]
            a["ATOM14_MASK"][restype, i] = 1.0
            a["ATOM14_TO_GROUP"][restype, i] = group
            a["ATOM14_LITERATURE"][restype, i] = position
            positions[name] = np.array(position, dtype=np.float64)
        for i, name in enumerate(names):
            a["ATOM14_TO_ATOM37"][restype, i] = ATOM_ORDER[name]
            a["ATOM37_MASK"][restype, ATOM_ORDER[name]] = 1.0
        a["BACKBONE_LITERATURE"][restype] = [positions[n] for n in ("N", "CA", "C")]
        frames = a["DEFAULT_FRAMES"][restype]
        # 0 backbone, 1 pre-omega: identity; 2 phi: about N-CA; 3 psi: about CA-C
        frames[2] = _rigid_4x4(positions["N"] - positions["CA"], np.array([1.0, 0.0, 0.0]), positions["N"])
        frames[3] = _rigid_4x4(positions["C"] - positions["CA"], positions["CA"] - positions["N"], positions["C"])
        chis = CHI_ANGLES_ATOMS[resname]
        if chis:
            p0, p1, p2 = (positions[n] for n in chis[0][:3])
            frames[4] = _rigid_4x4(p2 - p1, p0 - p1, p2)
        for k in range(1, len(chis)):
            # the next rotation axis starts at the previous group's origin and ends at the atom that
            # defined the previous torsion, whose literature position is in the previous group's frame
            end = positions[chis[k][2]]
            frames[4 + k] = _rigid_4x4(end, np.array([-1.0, 0.0, 0.0]), end)
        for k, atoms in enumerate(chis):
            a["CHI_ANGLES_MASK"][restype, k] = 1.0
            a["CHI_ATOM14_INDICES"][restype, k] = [index[n] for n in atoms]
            a["GROUP_BASE_ATOM14"][restype, 4 + k] = [index[n] for n in atoms[1:]]
            a["GROUP_MASK"][restype, 4 + k] = 1.0
        a["CHI_PI_PERIODIC"][restype] = PI_PERIODIC_CHIS.get(resname, (0, 0, 0, 0))
        a["GROUP_BASE_ATOM14"][restype, 0] = [index[n] for n in ("C", "CA", "N")]
        a["GROUP_BASE_ATOM14"][restype, 3] = [index[n] for n in ("CA", "C", "O")]
        a["GROUP_MASK"][restype, [0, 3]] = 1.0
        if resname in RENAMING_SWAPS:
            a["GROUP_IS_AMBIGUOUS"][restype, 4 + len(chis) - 1] = 1.0  # the last chi group
            for name1, name2 in RENAMING_SWAPS[resname].items():
                i, j = index[name1], index[name2]
                a["ATOM14_IS_AMBIGUOUS"][restype, [i, j]] = 1.0
                a["ATOM14_SWAP"][restype, i], a["ATOM14_SWAP"][restype, j] = j, i
    # Unknown residues: no predicted atoms and identity default frames, as in AlphaFold. Their
    # ground truth keeps N, CA, C, O (GT_ATOM14_NAMES, as AlphaFold's atom37 data does), so their
    # backbone and psi frames exist in the ground truth; the predicted structure's backbone atoms
    # (`backbone_positions`) are placed with alanine's geometry.
    a["GROUP_BASE_ATOM14"][UNK, 0] = a["GROUP_BASE_ATOM14"][0, 0]
    a["GROUP_BASE_ATOM14"][UNK, 3] = a["GROUP_BASE_ATOM14"][0, 3]
    a["GROUP_MASK"][UNK, [0, 3]] = 1.0
    a["BACKBONE_LITERATURE"][UNK] = a["BACKBONE_LITERATURE"][0]
    return a


_ARRAYS = _build()
ATOM14_MASK = _ARRAYS["ATOM14_MASK"]
ATOM14_TO_GROUP = _ARRAYS["ATOM14_TO_GROUP"]
ATOM14_LITERATURE = _ARRAYS["ATOM14_LITERATURE"]
DEFAULT_FRAMES = _ARRAYS["DEFAULT_FRAMES"]
ATOM14_TO_ATOM37 = _ARRAYS["ATOM14_TO_ATOM37"]
ATOM37_MASK = _ARRAYS["ATOM37_MASK"]
CHI_ANGLES_MASK = _ARRAYS["CHI_ANGLES_MASK"]
CHI_PI_PERIODIC = _ARRAYS["CHI_PI_PERIODIC"]
CHI_ATOM14_INDICES = _ARRAYS["CHI_ATOM14_INDICES"]
GROUP_BASE_ATOM14 = _ARRAYS["GROUP_BASE_ATOM14"]
GROUP_MASK = _ARRAYS["GROUP_MASK"]
GROUP_IS_AMBIGUOUS = _ARRAYS["GROUP_IS_AMBIGUOUS"]
ATOM14_IS_AMBIGUOUS = _ARRAYS["ATOM14_IS_AMBIGUOUS"]
ATOM14_SWAP = _ARRAYS["ATOM14_SWAP"]
BACKBONE_LITERATURE = _ARRAYS["BACKBONE_LITERATURE"]
