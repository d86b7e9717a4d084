"""Protein geometry shared by the data pipeline and the AlphaFold model: AlphaFold 2's residue and
atom tables (residue_constants), rigid transforms (rigid) and the all-atom conversions between
frames, torsion angles and atom positions (all_atom). Below memtrain.data and memtrain.models, so
both read one copy; memtrain.models.alphafold re-exports each module under its old name."""
