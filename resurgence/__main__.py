import sys

from resurgence.cli import main

sys.exit(main())
