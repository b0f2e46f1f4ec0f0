"""`python -m ttpa_ray.cli`."""

import sys

from ttpa_ray.cli import main

sys.exit(main())
