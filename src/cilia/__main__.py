import sys

from cilia.cli import main

sys.exit(main())
