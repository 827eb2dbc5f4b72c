import sys

from chaos.soak.run import main

sys.exit(main())
