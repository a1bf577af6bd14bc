import sys

from pneumo_core.cli.main import main

sys.exit(main())
