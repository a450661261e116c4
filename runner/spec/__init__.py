"""Specs: parse (YAML with positions) -> validate (every problem at once) -> resolve."""

from runner.spec.image import ImageSpec
from runner.spec.job import JobSpec
from runner.spec.load import load_image, load_job, resolve, to_yaml, validate

__all__ = ["ImageSpec", "JobSpec", "load_image", "load_job", "resolve", "to_yaml", "validate"]
