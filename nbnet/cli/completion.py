"""``nbnet completion bash|zsh``: shell completion scripts generated from the argparse parser
itself (its subcommands, their options, the choices of options and positionals), so a new
command or option completes without editing this file.

bash: ``eval "$(nbnet completion bash)"`` in ~/.bashrc (or the output saved as
``~/.local/share/bash-completion/completions/nbnet``). zsh: ``eval "$(nbnet completion zsh)"`` in
~/.zshrc after ``compinit`` (or the output saved as ``_nbnet`` in a folder of ``$fpath``).
Experiment names complete from ``experiments/*.toml`` in the working directory and the shipped
examples.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from nbnet.experiment import config

SHELLS = ("bash", "zsh")


def add_commands(sub, root: argparse.ArgumentParser) -> None:
    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)",
                       description="Print the completion script of SHELL. bash: eval \"$(nbnet completion bash)\" in "
                                   "~/.bashrc; zsh: eval \"$(nbnet completion zsh)\" in ~/.zshrc (after compinit).")
    p.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash or zsh")
    p.set_defaults(func=cmd_completion, root_parser=root)


def cmd_completion(args) -> int:
    script = bash_script(args.root_parser) if args.shell == "bash" else zsh_script(args.root_parser)
    sys.stdout.write(script)
    return 0


# --- the parser, as data ----------------------------------------------------------------------
@dataclass
class Option:
    names: list[str]
    help: str
    takes_value: bool
    choices: list[str] = field(default_factory=list)
    repeatable: bool = False


@dataclass
class Command:
    name: str
    help: str
    options: list[Option]
    positionals: list[tuple[str, list[str]]]  # (metavar or dest, choices)


def _options(parser: argparse.ArgumentParser) -> list[Option]:
    out = []
    for a in parser._actions:
        if not a.option_strings or a.help == argparse.SUPPRESS:
            continue
        out.append(Option(list(a.option_strings), _clean(a.help), a.nargs != 0,
                          [str(c) for c in a.choices or ()], isinstance(a, argparse._AppendAction)))
    return out


def commands(parser: argparse.ArgumentParser) -> list[Command]:
    """Every subcommand of ``parser`` with its options and positionals."""
    out = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {c.dest: _clean(c.help) for c in action._choices_actions}
        for name, sub in action.choices.items():
            pos = [(a.metavar or a.dest, [str(c) for c in a.choices or ()]) for a in sub._actions
                   if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
            out.append(Command(name, helps.get(name, ""), _options(sub), pos))
    return out


def _clean(text) -> str:
    return " ".join(str(text or "").replace("%(default)s", "").split())


def experiment_names() -> list[str]:
    """The shipped examples' names (``experiments/*.toml`` of the working directory are listed
    by the script itself, when it runs)."""
    return config.shipped_experiments()


# --- bash ---------------------------------------------------------------------------------------
def _bash_case(cmd: Command) -> str:
    valued = [n for o in cmd.options if o.takes_value and not o.choices for n in o.names]
    lines = [f"        {cmd.name})", '            case "$prev" in']
    for o in cmd.options:
        if o.choices:
            lines.append(f"                {'|'.join(o.names)}) COMPREPLY=($(compgen -W \"{' '.join(o.choices)}\" -- \"$cur\"));"
                         " return 0 ;;")
    if valued:  # a value of its own: nothing to offer but the shell's default (file names)
        lines.append(f"                {'|'.join(valued)}) return 0 ;;")
    lines.append("            esac")
    opts = " ".join(n for o in cmd.options for n in o.names)
    lines.append(f'            if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "{opts}" -- "$cur")); return 0; fi')
    words = " ".join(c for _, choices in cmd.positionals for c in choices)
    if any(name == "EXPERIMENT" for name, _ in cmd.positionals):
        words += ' $(_nbnet_experiments)'
    if words.strip():
        lines.append(f'            COMPREPLY=($(compgen -W "{words.strip()}" -- "$cur"))')
    lines.append("            ;;")
    return "\n".join(lines)


def bash_script(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    top = " ".join([c.name for c in cmds] + [n for o in _options(parser) for n in o.names])
    cases = "\n".join(_bash_case(c) for c in cmds)
    shipped = " ".join(experiment_names())
    return f"""# bash completion for nbnet, generated from its parser by `nbnet completion bash`
_nbnet_experiments() {{
    local f
    for f in experiments/*.toml; do [[ -e "$f" ]] && f="${{f##*/}}" && printf '%s\\n' "${{f%.toml}}"; done
    printf '%s\\n' {shipped}
}}

_nbnet_complete() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" cmd="" i
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "{top}" -- "$cur"))
        return 0
    fi
    case "$cmd" in
{cases}
    esac
    return 0
}}

complete -o default -F _nbnet_complete nbnet
"""


# --- zsh ----------------------------------------------------------------------------------------
def _zq(text: str) -> str:
    """Text inside a single-quoted _arguments spec: no quote, brackets or colons to confuse it."""
    return text.replace("'", "'\\''").replace("[", "(").replace("]", ")").replace(":", ";")


def _zsh_option(o: Option) -> list[str]:
    star = "*" if o.repeatable else ""
    value = ""
    if o.choices:
        value = f":{_zq(o.names[-1].lstrip('-'))}:({' '.join(o.choices)})"
    elif o.takes_value:
        value = f":{_zq(o.names[-1].lstrip('-'))}:_files"
    return [f"'{star}{n}[{_zq(o.help)}]{value}'" for n in o.names]


def _zsh_case(cmd: Command) -> str:
    specs = [s for o in cmd.options for s in _zsh_option(o)]
    for i, (name, choices) in enumerate(cmd.positionals, 1):
        action = f"({' '.join(choices)})" if choices else "_nbnet_experiments" if name == "EXPERIMENT" else "_files"
        specs.append(f"'{i}:{_zq(name)}:{action}'")
    body = " \\\n                ".join(specs)
    return f"            {cmd.name})\n                _arguments {body}\n                ;;"


def zsh_script(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    described = "\n".join(f"        '{c.name}:{_zq(c.help)}'" for c in cmds)
    top = " \\\n        ".join(s for o in _options(parser) for s in _zsh_option(o))
    cases = "\n".join(_zsh_case(c) for c in cmds)
    shipped = " ".join(experiment_names())
    return f"""#compdef nbnet
# zsh completion for nbnet, generated from its parser by `nbnet completion zsh`
_nbnet_experiments() {{
    local -a names
    names=(experiments/*.toml(N:t:r) {shipped})
    _describe -t experiments 'experiment' names -- || _files -g '*.toml'
}}

_nbnet() {{
    local curcontext="$curcontext" state line
    local -a commands
    commands=(
{described}
    )
    _arguments -C \\
        {top} \\
        '1: :->command' \\
        '*:: :->args'
    case $state in
        command) _describe -t commands 'nbnet command' commands ;;
        args)
            case $words[1] in
{cases}
            esac
            ;;
    esac
}}

if [[ "${{zsh_eval_context[-1]}}" == loadautofunc ]]; then
    _nbnet "$@"
else
    compdef _nbnet nbnet
fi
"""
