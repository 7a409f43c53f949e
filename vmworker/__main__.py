import sys

from vmworker.cli import main

sys.exit(main())
