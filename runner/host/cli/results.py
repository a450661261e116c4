"""`runner chat`, `runner eval`, `runner export` and `runner serve`: what was trained, evaluated, exported and
served. Thin, as runner.host.cli: no torch here; the work runs in `runner.train.*` modules, locally or
in the job's image through the run's executor."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from runner.core.errors import RunError
from runner.host.cli.common import report, sink

_executor = click.option(
    "--executor", type=click.Choice(["docker", "local"]), default=None,
    help="Where the model runs; default: where the run trained.",
)  # fmt: skip


def run_of(ref: str):
    """A run's record: a job spec (its latest succeeded run), a run directory, or a run id."""
    from runner.core.rundir import RunDir, find_run, latest_run

    if Path(ref).is_file():
        from runner.core.jobspec.load import load_job

        spec = load_job(ref, files=False)
        return latest_run(spec.output.dir, spec.name)
    record = find_run(ref)  # refuses anything that is not a run
    if RunDir.holds_run(ref):
        record.run_dir = str(Path(ref).resolve())
    return record


def where(record, executor: str | None) -> str:
    """Where a tool on a run's result runs: as asked, else where the run trained."""
    return executor or ("docker" if record.in_image else "local")


@click.command("export")
@click.argument("run")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Directory to write [default: RUN_DIR/export]; must be new or empty.")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace what OUT holds (only once the export is complete).")
@click.option("--dtype", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
              help="Weights' type; auto: the base model's.")  # fmt: skip
@_executor
def export(run: str, out: str | None, force: bool, dtype: str, executor: str | None) -> None:
    """Merge a run's adapter into its base and write a model plain `transformers` loads.

    RUN is a run directory, a run id, or a job spec (its latest succeeded run). Prefix, P-Tuning
    and prompt-tuning adapters cannot merge: the adapter is exported with how to load it."""
    from runner.core.target import check_out, resolve
    from runner.host.execute.result_tools import run_tool

    record = run_of(run)
    resolve(record.run_dir)  # a run without a result is refused here, before anything starts
    target = Path(out).resolve() if out else record.dir.export
    check_out(target, force)
    args = [
        "runner.train.tools.export",
        record.run_dir,
        str(target),
        "--dtype",
        dtype,
        *(["--force"] if force else []),
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    if where(record, executor) == "local":
        sys.exit(run_tool(record, args, "local", sink, interactive=False))
    sys.exit(_export_in_image(record, args, target))


def _export_in_image(record, args: list[str], target: Path) -> int:
    """The container writes into a staging directory of the job's user beside OUT (nothing else
    of the host is writable to it); the result then takes OUT's place."""
    import os
    import shutil
    import tempfile

    from runner.host.execute.result_tools import run_tool
    from runner.host.render.lockdown import job_user

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        uid, gid = job_user(os.getuid(), os.getgid())
        if (uid, gid) != (os.getuid(), os.getgid()):
            os.chown(staging, uid, gid)  # root submitted: the tool runs unprivileged
        args = [*args[:2], str(staging / target.name), *args[3:]]
        staged, shown = str(staging / target.name).encode(), str(target).encode()
        code = run_tool(record, args, "docker", lambda chunk: sink(chunk.replace(staged, shown)),
                        interactive=False, writes=(str(staging),))  # fmt: skip
        if code == 0:
            from runner.core.target import follow_umask

            follow_umask(staging / target.name)  # this user's umask, not the container's
            if target.exists():
                shutil.rmtree(target)  # --force, checked before anything started
            os.replace(staging / target.name, target)
        return code
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@click.command("eval")
@click.argument("job")
@click.option("--data", "data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Test set (a data file as in data.datasets) [default: the run's own data; its "
              "validation split where data.val_size is set].")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["alpaca", "sharegpt", "classification", "tagging"]),
              default=None, help="Format of --data [default: alpaca; a classifier's: its training data's format "
              "and columns].")  # fmt: skip
@click.option("--max-samples", type=click.IntRange(min=1), default=None,
              help="Evaluate at most this many records (with --benchmark: questions per subject).")  # fmt: skip
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, help="Longest generated answer.")
@click.option("--benchmark", type=click.Path(exists=True, file_okay=False), default=None,
              help="Score a multiple-choice benchmark in this directory (MMLU, C-Eval or CMMLU layout) "
              "instead of generating answers.")  # fmt: skip
@click.option("--layout", type=click.Choice(["auto", "mmlu", "ceval", "cmmlu"]), default="auto", show_default=True,
              help="The benchmark's layout.")  # fmt: skip
@click.option("--split", type=click.Choice(["auto", "val", "test"]), default="auto", show_default=True,
              help="The benchmark split scored (auto: test; val for C-Eval).")  # fmt: skip
@click.option("--n-shot", type=click.IntRange(min=0), default=5, show_default=True,
              help="Solved dev examples before each benchmark question.")  # fmt: skip
@click.option("--subject", "subjects", multiple=True, help="Only this benchmark subject (repeat for more).")
@_executor
def evaluate(job: str, data: str | None, fmt: str | None, max_samples: int | None, max_new_tokens: int | None,
             benchmark: str | None, layout: str, split: str, n_shot: int, subjects: tuple[str, ...],
             executor: str | None) -> None:  # fmt: skip
    """Loss, perplexity, generated answers, BLEU and ROUGE of a run (or of a `stage: eval` spec);
    with --benchmark, a multiple-choice benchmark's accuracy per subject and overall; of a
    classifier (a cls or ner run), accuracy, F1 and the confusion matrix, or entity-level F1.

    JOB is a `stage: eval` job spec (submitted as it is), or a run: a run directory, run id, or
    a training spec (its latest succeeded run). The evaluation is a run of its own, under
    OUTPUT/NAME-eval/, with generated_predictions.jsonl (benchmark_predictions.jsonl) and
    eval_results.json."""
    from runner.host.evalspec import eval_spec_for, is_eval_spec
    from runner.host.execute.submit import submit

    if data and benchmark:
        raise click.UsageError("--data and --benchmark are two kinds of evaluation; give one")
    if Path(job).is_file() and is_eval_spec(job):
        if data or max_samples or max_new_tokens or benchmark:
            raise RunError("--data, --benchmark, --max-samples and --max-new-tokens apply to a run; a stage: eval "
                           "spec sets them in its data and eval sections")  # fmt: skip
        spec_file, base, name = Path(job), None, executor or "docker"
    else:
        record = run_of(job)
        bench = None
        if benchmark:
            bench = {"path": benchmark, "layout": layout, "split": split, "n_shot": n_shot,
                     "subjects": list(subjects) or None}  # fmt: skip
        spec_file = eval_spec_for(record, data, fmt, max_samples, max_new_tokens, bench)
        base, name = Path.cwd(), where(record, executor)
    report(submit(spec_file, name, sink, base=base))


@click.command("serve")
@click.argument("target")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens it to the network (set an API key).")  # fmt: skip
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--api-key", envvar="RUNNER_API_KEY", default=None,
              help="Require `Authorization: Bearer KEY` [env: RUNNER_API_KEY].")  # fmt: skip
@click.option("--name", default=None, help="The model id clients name [default: the run's or directory's].")
@click.option("--max-tokens", default=512, show_default=True, type=click.IntRange(min=1),
              help="Answer length when a request sets none.")  # fmt: skip
@click.option("--max-batch", default=16, show_default=True, type=click.IntRange(min=1),
              help="Requests generated together (continuous batching).")  # fmt: skip
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(min=0),
              help="Requests waiting beyond those; more are answered 429 with Retry-After.")  # fmt: skip
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds one request may take, waiting included (then 504).")  # fmt: skip
@click.option("--drain", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds running requests get to finish after SIGTERM or Ctrl-C.")  # fmt: skip
@click.option("--engine", type=click.Choice(["auto", "batched", "serial"]), default="auto", show_default=True,
              help="batched: transformers' continuous batching; serial: one request at a time; auto: "
              "batched where the model allows (not prefix/P-tuning/prompt-tuning adapters, remote code).")  # fmt: skip
@_executor
def serve(target: str, host: str, port: int, api_key: str | None, name: str | None, max_tokens: int,
          max_batch: int, max_queue: int, timeout: float, drain: float, engine: str,
          executor: str | None) -> None:  # fmt: skip
    """An OpenAI-compatible HTTP server (/v1/models, /v1/chat/completions, streaming or not).

    TARGET is a run (directory, id, or job spec: its latest succeeded run) or an exported model
    directory (served here). In the run's image the container keeps its network off: the server
    listens on a unix socket and this process forwards HOST:PORT to it."""
    import os

    from runner.core.offline import OFFLINE_ENV
    from runner.core.target import resolve

    exported = Path(target, "config.json").exists() or Path(target, "adapter_config.json").exists()
    record = None if exported else run_of(target)
    path = str(Path(target).resolve()) if exported else record.run_dir
    # a run without a result, a directory that is no model, a reward model: refused before loading; a
    # classifier is served with POST /v1/classify instead of the chat endpoints
    loaded = resolve(path)
    if not loaded.classifier:
        loaded.refuse_not_generative("be served as a chat model")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(f"warning: serving on {host} without an API key: anyone who reaches it can use it",
                   err=True)  # fmt: skip
    module_args = [
        "runner.train.tools.serve", path, "--max-tokens", str(max_tokens), "--max-batch", str(max_batch),
        "--max-queue", str(max_queue), "--timeout", str(timeout), "--drain", str(drain), "--engine", engine,
        *(["--name", name] if name else []),
    ]  # fmt: skip
    if record is not None and where(record, executor) == "docker":
        from runner.host.execute.serving import serve_in_image

        sys.exit(serve_in_image(record, module_args, host, port, api_key, sink))
    if executor == "docker":
        raise RunError(
            "an exported model directory is served here (--executor local); serve the run to use its image"
        )
    from runner.host.execute.local import require_training_libraries

    require_training_libraries(
        "serving here (--executor local)", "Serve the run instead (runner serve RUN: in its image)"
    )
    argv = [sys.executable, "-m", *module_args, "--host", host, "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_API_KEY"}
    env.update(OFFLINE_ENV, **({"RUNNER_API_KEY": api_key} if api_key else {}))
    os.execve(sys.executable, argv, env)  # the server is this process: a signal to it stops it


@click.command()
@click.argument("run")
@click.option("-m", "--message", help="Ask one question and exit; omit for an interactive chat.")
@click.option("--system", help="System prompt.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Longest answer, in tokens [default: 128, within the model's context].")  # fmt: skip
@click.option("--executor", type=click.Choice(["docker", "local"]), default=None,
              help="Where the model runs; default: where the run trained.")  # fmt: skip
def chat(run: str, message: str | None, system: str | None, max_new_tokens: int | None,
         executor: str | None) -> None:  # fmt: skip
    """Talk to what a run trained. RUN is a run directory, a run id, a job spec (its latest
    succeeded run), or an exported model directory. Interactive: answers stream, the conversation is kept, /reset
    forgets it."""
    from runner.core.launch import render_chat
    from runner.core.target import resolve
    from runner.host.execute.local import run_here
    from runner.host.execute.result_tools import run_tool

    if message is not None and not message.strip():
        raise click.BadParameter("the message is empty; ask something, or leave -m out for an interactive chat",
                                 param_hint="-m/--message")  # fmt: skip
    extra = ["--max-new-tokens", str(max_new_tokens)] if max_new_tokens else []
    if Path(run, "config.json").exists() or Path(run, "adapter_config.json").exists():  # an exported model
        resolve(run).refuse_not_generative("chat")
        sys.exit(run_here([*render_chat(Path(run).resolve(), message, system), *extra],
                          "chatting with an exported model",
                          "Chat with the run instead (runner chat RUN: in its image)"))  # fmt: skip
    record = run_of(run)
    resolve(record.run_dir).refuse_not_generative("chat")
    module_args = [*render_chat(Path(record.run_dir), message, system), *extra]
    sys.exit(run_tool(record, module_args, where(record, executor), sink, interactive=message is None))


COMMANDS = (chat, evaluate, export, serve)
