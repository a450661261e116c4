"""Job specs: parse (YAML with positions) -> validate (every problem at once) -> resolve."""

from runner.spec.job import JobSpec
from runner.spec.load import load_job, resolve, to_yaml, validate

__all__ = ["JobSpec", "load_job", "resolve", "to_yaml", "validate"]
