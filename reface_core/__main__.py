from .assets_cli import main
from .cli import exit_with

exit_with(main)
