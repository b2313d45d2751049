"""Errors in what the user gave (a flag, a dataset, a run folder), as distinct from bugs.

`train.py` and `evaluate.py` print these as `<prog>: error: <message>` with exit status 2,
as argparse does for a bad flag, rather than a traceback that buries the message;
CVAE_JAX_TRACEBACK=1 shows the traceback as well. Each class also derives from the
built-in error that code calling the library would catch (ValueError, FileNotFoundError,
FileExistsError), so notebooks and tests that catch those keep working.
"""

from __future__ import annotations


class InputError(Exception):
    """The input, not the program, is wrong; the message says what was expected."""


class ConfigError(InputError, ValueError):
    """A flag's value (or a saved config.json's) that cvae-jax or this machine cannot take."""


class DatasetError(InputError, ValueError):
    """The dataset on disk does not match the reference layout or contents."""


class RunFolderError(InputError, FileNotFoundError):
    """A run folder, or a checkpoint in it, that is not there."""


class RunExistsError(InputError, FileExistsError):
    """A new run would write into a folder that already holds one."""


class PredictionError(InputError, ValueError):
    """A run whose predictions cannot be used as asked (non-finite frames in a submission)."""
