"""The neutral core both sides import: the job spec, the data readers and templates, the launch, the run directory. No torch, no click, no Docker."""
