import sys

from tapgate.cli import main

sys.exit(main())
