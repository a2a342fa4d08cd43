"""Known errors: each becomes one clear line on stderr and a non-zero exit in the CLI.

Library code raises these (never ``SystemExit``); ``cli.main`` turns them into one line.
Set ``SEGANSWER_DEBUG=1`` to see the full traceback instead.
"""

import json
from pathlib import Path


class SegAnswerError(Exception):
    """Base class of every error the CLI reports as one line."""

    exit_code = 1


class UsageError(SegAnswerError):
    """A flag, name or path given by the user is invalid (unknown preset, missing folder, ...)."""

    exit_code = 2


class NoAnswer(SegAnswerError):
    """The model ran and gave no answer (``infer``): a result, reported after the output, with an exit
    code of its own so that scripts tell it from bad input (2) and other failures (1)."""

    exit_code = 3


class ImageReadError(SegAnswerError):
    """An image file is missing, unreadable, not an image, or absurdly large."""


class MaskShapeError(SegAnswerError):
    """A mask does not have the (H, W) shape of the image it belongs to."""


class EmptyMaskError(SegAnswerError):
    """A mask has no foreground pixel: there is nothing to segment out.

    The reasoning loop catches this and falls back to the original image.
    """


class SegTokenError(SegAnswerError):
    """A sequence that must contain ``<|seg|>`` does not, or a model lacks the token."""


class ModelFolderError(SegAnswerError):
    """A model folder is missing files, or was not written by seganswer."""


class DataError(SegAnswerError):
    """A dataset file or record is missing or malformed (the message names file and record)."""


class OutputError(SegAnswerError):
    """An output file or folder could not be written (no space, no permission, ...): the message names it."""


def read_json(path, error: type[SegAnswerError] | None = None):
    """The JSON value in the file ``path`` (UTF-8); a file that is not valid JSON (or not UTF-8)
    raises ``error`` (default ``DataError``) as one line naming the file, as does one that cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise (error or DataError)(f"{path}: not valid JSON: {e}") from None
    except OSError as e:
        raise (error or DataError)(f"cannot read {path}: {e.strerror or e}") from None
