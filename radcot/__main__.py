import sys

from radcot.cli import main

sys.exit(main())
