import sys

from owllm.cli import main

sys.exit(main())
