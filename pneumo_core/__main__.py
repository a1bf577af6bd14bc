import gc
import sys

from pneumo_core.cli.main import main

status = main()
# The interpreter's last garbage collection walks every object TensorFlow and Keras made: 2.5-5 s of CPU at the end
# of each command that imported them (a training job, `pacs watch`, every CLI test), 0.3-0.9 s with them frozen
# (measured on the 2-core machine). They die with the process anyway: the command has closed its files and
# database connections, and logging flushes at exit as before.
gc.freeze()
sys.exit(status)
