"""AVR runtime: a streaming audio worker that is a drop-in replacement for AVR's core."""

__version__ = "0.1.0"
