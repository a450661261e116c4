"""runner: fine-tune open LLMs on GPU servers that have no internet."""

__version__ = "0.1.0"
