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


class NonFiniteOutputError(InputError, ValueError, FloatingPointError):
    """A model produced NaN or inf from these inputs (`inference.check_finite`); the message
    names the video and frame and what in the inputs likely caused it. Inputs unlike the
    training data are the usual cause, hence an input error (ValueError, as for inputs of a
    wrong shape); FloatingPointError is what numpy and the training loop's non-finite-loss
    guard raise for non-finite numbers, so either `except` catches it."""


class CheckpointFileError(InputError, ValueError):
    """A file that is not the checkpoint a command expects (`cvae-jax-convert`: the course
    template's), or whose contents do not fit the model; the message names the file."""
