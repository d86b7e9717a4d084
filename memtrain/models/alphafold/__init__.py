"""AlphaFold 2: model.py (the network), the Evoformer and structure-module pieces, heads and losses."""
