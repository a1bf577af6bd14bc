"""Long work off the web server: the retraining queue, its runners and their process identity.

Starts training as a subprocess (`python -m pneumo_core train`) and never imports it (nor TensorFlow).

- `queue`: the queue of one home dir (`JobQueue`: submit, cancel, list, wait, start the next job).
- `rows`: the job rows in SQLite (`JobStore`).
- `runner`: the runner process of one job (`python -m pneumo_core jobs run ID`).
- `argv`: a job's options, checked, and the command line they become.
- `progress_lines`: `progress:` lines as the row's stage, step and percent.
- `process`: processes known by pid and start time; stopping them; their half-written output.
- `results`: the result file a job's command writes (the new version's id and figures).
- `confine`: paths typed in the dashboard stay inside the configured folders.
"""
