import sys

from frozenvl.cli import main

sys.exit(main())
