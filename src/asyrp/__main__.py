import sys

from asyrp.cli import main

sys.exit(main())
