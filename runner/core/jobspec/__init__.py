"""Specs: parse (YAML with positions, yaml_loader) -> validate (every problem at once: the schema in
job and image, the cross-field and file checks in checks) -> resolve (load). Import from the
modules themselves: this package re-exports nothing, so importing one of them loads no other."""
