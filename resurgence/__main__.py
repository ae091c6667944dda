import os
import sys
import time

from resurgence.forkserver import run_in_server
from resurgence.phases import START_ENV

# When this job began, for its start-up phase (`resurgence.phases`); a forked job inherits it with the environment.
os.environ[START_ENV] = repr(time.time())
# In a Snakemake run with a fork server, the job runs in a fork of it (the imports are paid once).
code = run_in_server(sys.argv[1:])
if code is None:
    from resurgence.cli import main

    code = main()
sys.exit(code)
