"""Errors of MGFR training that the command line reports in one line."""


class TrainingError(ValueError):
    """Bad training input (dataset, base, checkpoint, config); the message names it."""
