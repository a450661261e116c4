"""Talk to a run's result or an exported model:
`python -m runner.train.tools.chat TARGET [--message TEXT] [--system TEXT] [--max-new-tokens N]`.

Without --message it is an interactive chat: answers stream in as they are generated, the
conversation is kept (the system prompt first), `/reset` forgets it, `/exit` or Ctrl-D ends.
Commands start with a slash, so any word (exit, clear...) can be asked as it is. A conversation
longer than the model's context is refused with the same rule as `runner serve` (exit 2 with
--message; in a chat the turn is dropped and the chat goes on).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.core import offline
from runner.core.errors import RunnerError

HELP = "/reset forgets the conversation, /system TEXT sets the system prompt, /exit ends (or Ctrl-D)"
DEFAULT_MAX_NEW_TOKENS = 128


def _settings(loaded, messages: list[dict], max_new_tokens: int | None):
    """Generation settings for this conversation, or the reason it does not fit the context."""
    from runner.train.tools.inference import Settings, context_problem, prompt_ids

    used = len(prompt_ids(loaded, messages))
    if problem := context_problem(loaded, used, max_new_tokens):
        return None, problem
    return Settings(max_new_tokens=min(max_new_tokens or DEFAULT_MAX_NEW_TOKENS, loaded.context - used)), None


def interactive(loaded, system: str | None, max_new_tokens: int | None) -> int:
    from runner.train.tools.inference import stream

    print(f"chatting with {loaded.name}; {HELP}", flush=True)
    history: list[dict] = []
    while True:
        try:
            text = input("user> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text in ("/reset", "/clear"):
            history = []
            print("(conversation reset)", flush=True)
            continue
        if text == "/system" or text.startswith("/system "):
            system = text[len("/system") :].strip() or None
            history = []
            print(f"(system prompt {'set' if system else 'cleared'}; conversation reset)", flush=True)
            continue
        if text.startswith("/") and not text.startswith("//"):
            print(f"unknown command {text.split()[0]}; {HELP} (start with // to say something beginning with /)",
                  flush=True)  # fmt: skip
            continue
        text = text[1:] if text.startswith("//") else text
        turn = [*history, {"role": "user", "content": text}]
        messages = ([{"role": "system", "content": system}] if system else []) + turn
        settings, problem = _settings(loaded, messages, max_new_tokens)
        if problem:
            print(f"(not sent: {problem}; /reset starts a new conversation)", flush=True)
            continue
        history = turn
        print("assistant> ", end="", flush=True)
        answer = ""
        try:
            for piece in stream(loaded, messages, settings):
                answer += piece
                print(piece, end="", flush=True)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            print(" [stopped]", end="")
        print(flush=True)
        history.append({"role": "assistant", "content": answer.strip()})


def main(argv: list[str] | None = None) -> int:
    offline.enter()
    parser = argparse.ArgumentParser(prog="python -m runner.train.tools.chat")
    parser.add_argument("target", type=Path, help="a run directory or an exported model directory")
    parser.add_argument("--message", "-m", help="one question; omit for an interactive chat")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"longest answer [default: {DEFAULT_MAX_NEW_TOKENS}, within the model's context]")  # fmt: skip
    args = parser.parse_args(argv)
    if args.message is not None and not args.message.strip():
        print(
            "error: the message is empty; ask something, or leave --message out for a chat", file=sys.stderr
        )
        return 2
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        print(f"error: --max-new-tokens must be at least 1 (got {args.max_new_tokens})", file=sys.stderr)
        return 2
    from runner.train.tools.inference import generate
    from runner.train.tools.inference import load as load_target

    try:
        loaded = load_target(args.target, purpose="chat")
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if args.message is None:
        return interactive(loaded, args.system, args.max_new_tokens)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.message}
    ]
    settings, problem = _settings(loaded, messages, args.max_new_tokens)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(f"user> {args.message}\nassistant> {generate(loaded, [messages], settings)[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
