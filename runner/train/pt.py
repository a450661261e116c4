"""Stage pt: continued pretraining on plain text, concatenated and cut into blocks.

The same steps as sft (runner/train/sft.py); the data path (dataset.build) and the tokenizer
(no chat template) differ by stage.
"""

from runner.train.sft import run

__all__ = ["run"]
