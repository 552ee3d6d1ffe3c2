"""The ``labelzip`` command: a thin dispatcher over one module per subcommand.

Each subcommand module exposes ``build_parser()`` and ``main(argv) -> int`` so it
can be tested in-process. Errors labelzip raises on purpose become one line on
stderr and exit code 2. A reader that closes stdout early (``labelzip info --json
| head -1``) ends the command quietly with exit code 141 (128 + SIGPIPE, what a
process killed by SIGPIPE reports); nothing else is caught.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

from labelzip.errors import LabelzipError, ReportedError

__all__ = ["BROKEN_PIPE_EXIT", "COMMANDS", "main", "print_error", "run_command"]

# 128 + SIGPIPE: the status of a process that SIGPIPE ended, as shells report it.
BROKEN_PIPE_EXIT = 141

# subcommand -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("labelzip.cli.quickstart", "the whole experiment on Fashion-MNIST"),
    "relabel": ("labelzip.cli.relabel", "label replayable views of a distilled set"),
    "train": ("labelzip.cli.train", "train a student from a set and its archive"),
    "storage": (
        "labelzip.cli.storage",
        "bytes of images, labels and side info per framework",
    ),
    "compress": (
        "labelzip.cli.compress",
        "compress a logits file into a labelzip archive",
    ),
    "decompress": ("labelzip.cli.decompress", "decode an archive back to dense logits"),
    "import": (
        "labelzip.cli.import_labels",
        "import SRe2L, LPLD, LPQLD, FKD, ... label files into an archive",
    ),
    "export": (
        "labelzip.cli.export_labels",
        "write an imported archive back as the framework's files",
    ),
    "info": ("labelzip.cli.info", "show an archive's codec, layout and all-in size"),
    "eval-codec": (
        "labelzip.cli.eval_codec",
        "fidelity of an archive against the teacher",
    ),
    "distill": (
        "labelzip.cli.distill",
        "build a distilled image set (random, sre2l, rded, ...)",
    ),
    "relabel-lm": ("labelzip.cli.relabel_lm", "label a text corpus with an LM teacher"),
    "train-lm": ("labelzip.cli.train_lm", "train an LM student (labels, CE, online)"),
    "bench": ("labelzip.cli.bench", "benchmarks (lm, vision, imagenet, scale)"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: labelzip COMMAND [options]   (labelzip COMMAND --help for details)",
        "",
        "Compress the soft labels of dataset distillation and LLM distillation.",
        "",
        "commands:",
    ]
    lines += [
        f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()
    ]
    return "\n".join(lines)


def print_error(name: str, exc: BaseException) -> None:
    """The one-line error of subcommand ``name``, on stderr, flushed.

    Written as one string so that the lines of torchrun ranks sharing one stderr
    never interleave (``print`` writes the newline separately).
    """
    sys.stderr.write(f"labelzip {name}: error: {exc}\n")
    sys.stderr.flush()


def run_command(name: str, body: Callable[[], int]) -> int:
    """Run a subcommand body, turning labelzip errors into a one-line message."""
    try:
        return body()
    except ReportedError:
        return 2
    except LabelzipError as exc:
        print_error(name, exc)
        return 2
    except KeyboardInterrupt:
        print(f"labelzip {name}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``labelzip COMMAND ...``; returns the exit code."""
    try:
        code = _dispatch(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_EXIT
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of what is still
    buffered cannot raise BrokenPipeError again (the recipe of Python's signal docs)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (tests): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from labelzip import __version__

        print(f"labelzip {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(
            f"labelzip: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr
        )
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    code: int = module.main(args[1:])
    return code
