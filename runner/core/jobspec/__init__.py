"""Specs: parse (YAML with positions) -> validate (every problem at once) -> resolve."""

from runner.core.jobspec.image import ImageSpec
from runner.core.jobspec.job import JobSpec
from runner.core.jobspec.load import load_image, load_job, resolve, to_yaml, validate

__all__ = ["ImageSpec", "JobSpec", "load_image", "load_job", "resolve", "to_yaml", "validate"]
