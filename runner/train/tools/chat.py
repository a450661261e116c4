"""Talk to a run's result or an exported model:
`python -m runner.train.tools.chat TARGET [--message TEXT] [--system TEXT]`.

Without --message it is an interactive chat: answers stream in as they are generated, the
conversation is kept (the system prompt first), `/reset` forgets it, `/exit` or Ctrl-D ends.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.core import offline
from runner.core.errors import RunnerError

HELP = "/reset forgets the conversation, /system TEXT sets the system prompt, /exit ends (or Ctrl-D)"


def interactive(loaded, system: str | None, settings) -> int:
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
        if text in ("/exit", "/quit", "exit", "quit"):
            return 0
        if text in ("/reset", "clear"):
            history = []
            print("(conversation reset)", flush=True)
            continue
        if text.startswith("/system"):
            system = text[len("/system") :].strip() or None
            history = []
            print(f"(system prompt {'set' if system else 'cleared'}; conversation reset)", flush=True)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}", flush=True)
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
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
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    from runner.train.tools.inference import Settings, generate
    from runner.train.tools.inference import load as load_target

    try:
        loaded = load_target(args.target)
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    settings = Settings(max_new_tokens=args.max_new_tokens)
    if args.message is None:
        return interactive(loaded, args.system, settings)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.message}
    ]
    print(f"user> {args.message}\nassistant> {generate(loaded, [messages], settings)[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
