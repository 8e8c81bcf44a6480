import sys

from nbnet.cli import main

sys.exit(main())
