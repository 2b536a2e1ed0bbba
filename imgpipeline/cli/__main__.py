import sys

from imgpipeline.cli.main import main

sys.exit(main())
