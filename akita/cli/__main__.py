import sys

from akita.cli import main

sys.exit(main())
