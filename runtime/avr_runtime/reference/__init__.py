"""Reference providers speaking AVR's provider protocols, so demos and tests need no cloud account.

They are stand-ins, not models: the STS echoes, ASR reports utterances it segments by energy, the LLM answers
with a template, TTS synthesises tones. What they exercise is the worker's real client code over real sockets.
"""
