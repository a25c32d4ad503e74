"""Larimar: episodic memory for language models.

Teach a language model a fact with one closed-form memory write, and make it forget with the
same write at weight -1, without retraining.
"""

__version__ = "0.1.0"
