from reface_core.cli import exit_with

from .cli import main

exit_with(main)
