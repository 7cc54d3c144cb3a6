"""Audio: codecs, resampling, buffers and voice-activity analysis. Pure computation, no I/O."""
