"""What people read: the console during a run, TensorBoard, events.jsonl, plots, the mistakes a net
makes, report.html, side-by-side comparison of runs and the list of runs. Nothing here computes with
a model: it reads run folders and results and draws them (inference/ and train/ hand it figures).

    observer.py    what a training run tells its observers (the trainer's list, each one here or in train/)
    sinks.py       the one factory that chooses a run's observers from its configuration
    console.py     progress bars or one line per epoch, the closing lines
    tensorboard.py --tensorboard: scalars, the configuration, the final images
    mlflow_sink.py --mlflow: parameters, epoch metrics, the summary, report.html and the kept weights
    run_figures.py curves.png and confusion.png when the run ends
    run_report.py  events.jsonl, and after the run its mistakes and report.html
    events.py      events.jsonl's names, re-exported from resnetlab.rundir (the run folder's files)
    plots.py       curves and confusion matrix (matplotlib, an optional extra)
    mistakes.py    the test images the kept weights get most confidently wrong (png + csv), per class
    html.py        report.html: everything about one run in one file, images inline
    compare.py     several runs on shared axes, their figures and the settings that differ
    runs.py        the run folders under a folder, newest first, with their state

Every file is written through resnetlab.fileio (atomically), by rank 0 alone; a run folder's
files are named, read and written by resnetlab.rundir.
"""
