import sys

from irr_ray.cli import main

sys.exit(main())
