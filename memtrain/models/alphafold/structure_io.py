"""Predicted structures to files: PDB or mmCIF through Biopython (Bio.PDB.StructureBuilder, PDBIO,
MMCIFIO), with the per-residue pLDDT in the B-factor column, as AlphaFold's protein.to_pdb does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from Bio.PDB import MMCIFIO, PDBIO
from Bio.PDB.StructureBuilder import StructureBuilder

from memtrain.protein import residue_constants as rc

FORMATS = {".pdb": "pdb", ".cif": "cif", ".mmcif": "cif"}


def structure_format(path: str | Path) -> str:
    """'pdb' or 'cif' from the file name's suffix; ValueError naming the file otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: the output must end in .pdb, .cif or .mmcif (PDB or mmCIF), not {suffix or 'nothing'}")
    return FORMATS[suffix]


def write_structure(
    path: str | Path,
    aatype: np.ndarray,
    atom14_positions: np.ndarray,
    atom14_mask: np.ndarray,
    residue_index: np.ndarray | None = None,
    plddt: np.ndarray | None = None,
    chain_id: str = "A",
    name: str = "prediction",
) -> Path:
    """Write one chain to `path` (PDB for .pdb, mmCIF for .cif/.mmcif) and return the path.

    aatype [N] (0..20), atom14_positions [N, 14, 3] (Angstrom), atom14_mask [N, 14] (atoms to
    write), residue_index [N] (0-based; written 1-based, default 0..N-1), plddt [N] (0-100, the
    B-factor; default 0). Unknown residues (20) are written as UNK with the atoms in their mask
    among N, CA, C, O. Occupancy 1.
    """
    fmt = structure_format(path)
    n = len(aatype)
    residue_index = np.arange(n) if residue_index is None else residue_index
    plddt = np.zeros(n) if plddt is None else plddt
    builder = StructureBuilder()
    builder.init_structure(name)
    builder.init_model(0)
    builder.init_chain(chain_id)
    builder.init_seg("    ")
    serial = 1
    for i in range(n):
        resname = rc.RESNAMES[int(aatype[i])]
        names = rc.GT_ATOM14_NAMES[resname]
        builder.init_residue(resname, " ", int(residue_index[i]) + 1, " ")
        for slot, atom in enumerate(names):
            if atom14_mask[i, slot] <= 0:
                continue
            builder.init_atom(
                atom, np.asarray(atom14_positions[i, slot], dtype=np.float32), float(plddt[i]), 1.0, " ",
                f" {atom:<3}" if len(atom) < 4 else atom, serial_number=serial, element=atom[0],
            )
            serial += 1
    writer = PDBIO() if fmt == "pdb" else MMCIFIO()
    writer.set_structure(builder.get_structure())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.save(str(path))
    return path
