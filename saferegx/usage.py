"""User errors of the command lines: one exception reported as one line with exit code 2, and
the loaders that turn a bad path given on the command line into it (never a traceback)."""

from __future__ import annotations

from pathlib import Path


class UsageError(Exception):
    """A user mistake, reported as one line and exit code 2."""


def load_model(path: str | None, flag: str = "--model"):
    """``(model, tokenizer)`` of an HF folder, or the embedded default for None."""
    from .data import DEFAULT_MODEL
    from .data import load_model as load

    if path not in (None, DEFAULT_MODEL) and not Path(path).is_dir():
        raise UsageError(f"{flag} {path}: no such model folder")
    try:
        return load(path)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load model {path}: {str(e).splitlines()[0]}") from None


def load_probe(path: Path, flag: str = "--probe"):
    from safetensors import SafetensorError

    from .risk.probe import Probe

    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such probe file")
    try:
        return Probe.load(path)
    except ValueError as e:
        raise UsageError(f"{path}: {e}") from None
    except (SafetensorError, OSError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: not a saferegx probe file ({e})") from None


def read_prompts(path: Path) -> list[str]:
    """Prompts of a file (one per line, or JSONL with "prompt"); errors name the file (and line)."""
    from .data import load_prompts

    try:
        return load_prompts(path)
    except UnicodeDecodeError as e:  # a ValueError too: catch it first
        raise UsageError(f"{path}: not UTF-8 text ({e.reason})") from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
