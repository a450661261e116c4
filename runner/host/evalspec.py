"""The `stage: eval` spec that evaluates a finished run (host side: no torch)."""

from __future__ import annotations

from pathlib import Path

from runner.core.errors import RunError
from runner.core.rundir import ADAPTER


def is_eval_spec(path: str | Path) -> bool:
    from runner.core.jobspec.yaml_loader import load_yaml

    data = load_yaml(path, env=None).data
    return isinstance(data, dict) and data.get("stage") == "eval"


def eval_spec_for(
    record, data: str | None = None, fmt: str | None = None, max_samples: int | None = None,
    max_new_tokens: int | None = None, benchmark: dict | None = None,
) -> Path:  # fmt: skip
    """Write the eval spec of a run's result (beside the evaluation runs) and return its path:
    the run's model, its data (or `data`, in format `fmt`: alpaca by default; a classifier's, its
    training data's format and columns), its generation defaults; with `benchmark` (the fields of
    eval.benchmark) a benchmark evaluation, which reads no data section."""
    from runner.core import stages
    from runner.core.jobspec.job import (
        BenchmarkSpec,
        ClassificationSpec,
        DatasetSpec,
        DataSpec,
        DistributedSpec,
    )
    from runner.core.jobspec.load import load_job, to_yaml

    for name, value in (("--max-samples", max_samples), ("--max-new-tokens", max_new_tokens)):
        if value is not None and value < 1:
            raise RunError(f"{name} must be at least 1 (got {value})")
    run = record.dir
    spec = load_job(run.spec_file, files=False)
    if spec.stage == "eval":
        raise RunError(f"run {record.id} is an evaluation; evaluate the run it evaluated")
    if spec.stage == "rm":
        from runner.core.target import RewardModelError

        raise RewardModelError(f"run {record.id} is a reward model (stage rm): it scores answers and writes none, so "
                       "there is nothing to generate and score; its pairwise accuracy on the held-out pairs is "
                       f"eval_accuracy in {run.results}")  # fmt: skip
    model = spec.model.model_copy()
    result = run.result()
    if result is None:
        raise RunError(f"run {record.id} has no result (no adapter/ or model/ in {run.path}); "
                       "only a run that finished training can be evaluated")  # fmt: skip
    if result.name == ADAPTER:
        model.adapter = str(result)
    else:
        model.path, model.adapter = str(result), None
    source = spec.data
    classifier = stages.STAGES[spec.stage].data.classify
    if classifier and benchmark:
        raise RunError(f"run {record.id} is a classifier (stage {spec.stage}): it answers no multiple-choice "
                       "questions; evaluate it on labelled data with --data FILE")  # fmt: skip
    absent = [d.path for d in source.datasets if d.path and not Path(d.path).exists()]
    if absent and not data and not benchmark:
        raise RunError(f"the data run {record.id} trained on is not on this machine ({absent[0]}: it ran "
                       f"under {record.executor}, which mounted it there); evaluate on a test set here with "
                       "--data FILE")  # fmt: skip
    if data:
        trained = source.datasets[0]
        if classifier:  # a test set in the layout of the training data: its format and columns
            fmt, columns = (
                fmt or trained.format,
                trained.columns if (fmt or trained.format) == trained.format else {},
            )
        else:
            fmt, columns = fmt or "alpaca", {}
        source = source.model_copy(update={
            "datasets": [DatasetSpec(path=str(Path(data).resolve()), format=fmt, columns=columns)], "val_size": 0.0,
            "mix_probs": None, "max_samples": None,
        })  # fmt: skip
    generation: dict = {
        "max_new_tokens": spec.eval.max_new_tokens if max_new_tokens is None else max_new_tokens,
        "max_samples": spec.eval.max_samples if max_samples is None else max_samples,
    }
    if benchmark:
        bench = BenchmarkSpec(**{**benchmark, "path": str(Path(benchmark["path"]).resolve())})
        generation["benchmark"] = bench
        source = source.model_copy(update={"datasets": [DatasetSpec(path=bench.path)], "val_size": 0.0,
                                           "mix_probs": None, "max_samples": None, "cache": False})  # fmt: skip
    # One process evaluates, on one GPU at most: training's launcher and DeepSpeed stay behind.
    gpus = spec.resources.gpus
    gpus = gpus[:1] if isinstance(gpus, list) else (0 if gpus == 0 else 1)
    resources = spec.resources.model_copy(update={"gpus": gpus, "nodes": 1, "procs_per_node": None})
    out = spec.model_copy(update={
        "name": f"{spec.name}-eval", "stage": "eval", "model": model, "data": DataSpec(**source.model_dump()),
        "eval": spec.eval.model_copy(update=generation), "resources": resources,
        "distributed": DistributedSpec(), "classification": ClassificationSpec(),  # the model holds its labels
    })  # fmt: skip
    path = Path(spec.output.dir) / out.name / f"{record.id}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = to_yaml(out)
    if benchmark:
        text = _without_data(text)  # the benchmark's directory becomes the data when the spec loads
    path.write_text(text, encoding="utf-8")
    return path


def _without_data(text: str) -> str:
    import io

    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.width = 4096
    tree = yaml.load(text)
    del tree["data"]
    out = io.StringIO()
    yaml.dump(tree, out)
    return out.getvalue()
