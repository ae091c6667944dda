import sys

from resurgence.forkserver import run_in_server

# In a Snakemake run with a fork server, the job runs in a fork of it (the imports are paid once).
code = run_in_server(sys.argv[1:])
if code is None:
    from resurgence.cli import main

    code = main()
sys.exit(code)
