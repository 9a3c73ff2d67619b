"""Looking at runs after (or while) they train: the mistakes a net makes, one self-contained HTML
report per run, side-by-side comparison of runs, the list of runs, and the run's event log.

    mistakes.py  the test images the kept weights get most confidently wrong (png + csv)
    events.py    events.jsonl: start, resume, interrupt, failed, finish (what happened when)
    html.py      report.html: everything about one run in one file, images inline
    compare.py   several runs on shared axes, their figures and the settings that differ
    runs.py      the run folders under a folder, newest first, with their state
    hooks.py     what the trainer calls (RunRecorder): events, TensorBoard, the after-run files

Every file is written through resnetlab.fileio (atomically), by rank 0 alone.
"""
