"""Data both sides read the same way: files -> records -> conversations or pairs, chat templates, the LLaMA-Factory dataset registry."""
