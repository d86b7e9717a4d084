"""Data readers and tokenizers."""
