"""Wire protocols: pure parsers and encoders, no I/O."""
