"""In-container side: data, templates, models, methods and one module per stage.

Importing this package makes the process offline before any Hugging Face library loads:
every path here reads local files only.
"""

import os

from runner.render.launch import OFFLINE_ENV

os.environ.update(OFFLINE_ENV)
# Weight-loading progress bars say nothing useful in a job log.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
