import sys

from shotnet.cli import main

sys.exit(main())
