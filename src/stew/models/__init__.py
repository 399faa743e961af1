"""Building blocks: encoders, heads and decoders. Methods compose these."""
