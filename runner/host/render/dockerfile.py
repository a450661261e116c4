"""render_dockerfile(image) -> str: the image's Dockerfile, a pure function of its spec."""

from __future__ import annotations

import shlex
from pathlib import Path

import jinja2

from runner.core.jobspec.image import ImageSpec
from runner.core.offline import OFFLINE_ENV

TEMPLATES = Path(__file__).with_name("templates")

# What the image sets beyond the job launch environment: no library may phone home.
IMAGE_ENV = {
    **OFFLINE_ENV,
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "BITSANDBYTES_NOWELCOME": "1",
    "DS_BUILD_OPS": "0",
    "GRADIO_ANALYTICS_ENABLED": "False",
}


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    return env


def render_dockerfile(image: ImageSpec) -> str:
    return _env().get_template("Dockerfile.j2").render(image=image, env=IMAGE_ENV)
