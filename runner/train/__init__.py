"""The in-container side: stages, the trainer, model loading, methods and the tools that run a
trained model. torch and the Hugging Face libraries are imported here and nowhere else.

Importing a module of this package changes nothing in the process; the entry points
(`python -m runner.train`, each tool's main) make it offline first (runner.core.offline).
"""
