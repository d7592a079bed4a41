"""``conduit completion bash|zsh|fish``: a shell completion script, generated from the parser itself.

Commands and their options come from the same argparse parser that reads them, so the completion
cannot drift from the CLI. Install with, e.g., ``source <(conduit completion bash)`` in ``~/.bashrc``,
``eval "$(conduit completion zsh)"`` in ``~/.zshrc``, or
``conduit completion fish > ~/.config/fish/completions/conduit.fish``.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any, Final

from conduit.cli.common import add_command

SHELLS: Final = ("bash", "zsh", "fish")


def add_parser(commands: Any) -> None:
    parser = add_command(
        commands,
        "completion",
        summary="print a shell completion script",
        description="Print a completion script for bash, zsh or fish.",
        epilog="examples:\n  source <(conduit completion bash)\n"
        "  conduit completion fish > ~/.config/fish/completions/conduit.fish",
    )
    parser.add_argument("shell", choices=SHELLS)
    parser.set_defaults(handler=completion)


def completion(args: argparse.Namespace) -> int:
    from conduit.cli.main import build_parser

    print(script(args.shell, commands_of(build_parser())), end="")
    return 0


def commands_of(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each subcommand's long options (``{"serve": ["--stdio", "--config", ...], ...}``)."""
    commands: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                options = [flag for item in sub._actions for flag in item.option_strings if flag.startswith("--")]
                commands[name] = options
    return commands


def script(shell: str, commands: dict[str, list[str]]) -> str:
    """The completion script for ``shell``.

    >>> print(script("fish", {"run": ["--config"]}))
    complete -c conduit -f -n __fish_use_subcommand -a run
    complete -c conduit -n '__fish_seen_subcommand_from run' -l config
    <BLANKLINE>
    """
    if shell == "fish":
        lines = [f"complete -c conduit -f -n __fish_use_subcommand -a {name}" for name in commands]
        for name, options in commands.items():
            seen = shlex.quote(f"__fish_seen_subcommand_from {name}")
            lines += [f"complete -c conduit -n {seen} -l {option.removeprefix('--')}" for option in options]
        return "\n".join(lines) + "\n"
    cases = "\n".join(f"    {name}) options={shlex.quote(' '.join(options))} ;;" for name, options in commands.items())
    bash = f"""_conduit() {{
  local current=${{COMP_WORDS[COMP_CWORD]}} options=""
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W {shlex.quote(" ".join([*commands, "--help", "--version"]))} -- "$current"))
    return
  fi
  case "${{COMP_WORDS[1]}}" in
{cases}
  esac
  if [[ $current == -* ]]; then
    COMPREPLY=($(compgen -W "$options --help" -- "$current"))
  else
    COMPREPLY=($(compgen -f -- "$current"))
  fi
}}
complete -o filenames -F _conduit conduit
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + bash
    return bash
