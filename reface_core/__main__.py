import sys

from .assets_cli import main

sys.exit(main())
