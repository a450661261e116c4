"""Stage pt: continued pretraining on plain text, concatenated and cut into blocks.

The same steps as sft (runner/train/stages/sft.py); the data path (dataset.build) and the tokenizer
(no chat template) differ by stage.
"""

from runner.train.stages.sft import run

__all__ = ["run"]
