"""`--mlflow URI`: the run logged to an MLflow tracking server (or any tracking URI MLflow takes),
beside the run folder. An optional extra: `pip install 'resnetlab[mlflow]'` (MLflow's client).

What is logged (rank 0 only, at the trainer's epoch ends and at the end, never inside a step):
    parameters          the configuration (config.json's "config"; --mlflow itself left out)
    metrics             each epoch's metrics.csv row, against the epoch; the summary's figures as
                        summary/<name> at the end
    artifacts           report.html, summary.json and the kept weights (best.safetensors or
                        model.safetensors)
    status              RUNNING, then FINISHED; KILLED on Ctrl-C, FAILED on a failure

The MLflow run's id is kept in the run folder (mlflow.json): `--resume` continues that run. The
experiment is "resnetlab" (MLflow's MLFLOW_EXPERIMENT_NAME names another); the run is named after
the run folder. A server that cannot be reached at the start is one line before anything is made;
one that fails later costs a warning, and the training goes on without it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from resnetlab.errors import UsageError, first_line
from resnetlab.fileio import write_json
from resnetlab.report.observer import Observer
from resnetlab.rundir import MLFLOW_RUN, REPORT_FILE, SUMMARY_FILE, kept_weights

RUN_ID_FILE = MLFLOW_RUN  # {"run_id", "experiment_id", "tracking_uri"}: what --resume continues
DEFAULT_EXPERIMENT = "resnetlab"
NOT_PARAMS = ("mlflow",)  # where the run was logged, not what was trained
# Unless the user set them: MLflow's client retries a failed request for about 4 minutes by
# default (rate limits), so a run would stall that long at an epoch's end: a few retries; and it
# prints a link on stdout when a run ends, which --json keeps for the summary: not printed.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
PROBE_SECONDS = 10


def require_mlflow() -> None:
    """A one-line UsageError when MLflow's client is missing."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UsageError(
            "--mlflow needs MLflow's client: pip install 'resnetlab[mlflow]'"
        ) from None


def check_server(uri: str) -> None:
    """The package, and for an http(s) URI a server that answers (any HTTP status will do: the
    client's first calls say what it thinks of us); else one line, before anything is made."""
    require_mlflow()
    if not uri.startswith(("http://", "https://")):
        return  # a local store (a path, file:, sqlite:): the client opens it at the start
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UsageError(
            f"--mlflow {uri}: the MLflow tracking server cannot be reached ({reason}); "
            "start it (mlflow server) or train without --mlflow"
        ) from None


def _param_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class MLflow(Observer):
    """One MLflow run for the run folder `run` (its `path`, `file(name)` and `enabled`: rank 0
    writes, the other ranks do nothing); `state` where the training starts (past its beginning: a
    resume, which continues the MLflow run named in the folder), `config` the configuration;
    `say` prints which MLflow run it is."""

    def __init__(self, uri: str, run, state, config: dict, *, say=None) -> None:
        self.uri, self.run, self.client, self.run_id = uri, run, None, None
        self.enabled = run.enabled
        if not self.enabled:
            return
        for name, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        resumed = state.epoch > 0 or state.step_in_epoch > 0
        try:
            self.run_id = self._continued() if resumed else None
            if self.run_id is None:
                self.run_id = self._created(config, state.history)
        except Exception as e:  # noqa: BLE001 - MLflow's or the transport's: one line at the start
            raise UsageError(
                f"--mlflow {uri}: {type(e).__name__}: {first_line(e, 300)}; "
                "check the tracking server, or train without --mlflow"
            ) from None
        if say is not None:
            say(f"logging to MLflow run {self.run_id} at {uri}")

    def _continued(self) -> str | None:
        """The MLflow run this folder logged to, set running again; None when there is none (or
        it was deleted on the server: a new one then gets the epochs so far)."""
        from mlflow.exceptions import MlflowException

        path = Path(self.run.file(RUN_ID_FILE))
        if not path.is_file():
            return None
        run_id = json.loads(path.read_text(encoding="utf-8"))["run_id"]
        try:
            found = self.client.get_run(run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        if found.info.lifecycle_stage != "active":
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _created(self, config: dict, history: list[dict]) -> str:
        """A new MLflow run with the configuration and the epochs done so far; its id saved."""
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )
        created = self.client.create_run(experiment_id, run_name=self.run.path.name)
        run_id = created.info.run_id
        write_json(
            self.run.file(RUN_ID_FILE),
            {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": self.uri},
        )
        from mlflow.entities import Param

        params = [
            Param(k, _param_value(v)) for k, v in sorted(config.items()) if k not in NOT_PARAMS
        ]
        self.client.log_batch(run_id, params=params)
        for row in history:  # a run folder whose MLflow run is gone: its epochs so far
            self._log_row(run_id, row)
        return run_id

    def _log_row(self, run_id: str, row: dict) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), stamp, row["epoch"])
            for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float))
        ]
        self.client.log_batch(run_id, metrics=metrics)

    def _safely(self, what: str, log) -> None:
        """Call `log()`; a failure mid-run stops this sink with one warning, never the training."""
        if not self.enabled:
            return
        try:
            log()
        except Exception as e:  # noqa: BLE001
            self.enabled = False
            print(
                f"resnetlab: warning: MLflow logging stopped ({what}: {type(e).__name__}: "
                f"{first_line(e, 200)}); the run goes on, its folder is complete",
                file=sys.stderr,
                flush=True,
            )

    def on_epoch_end(self, state, row: dict, is_best: bool) -> None:
        self._safely("metrics", lambda: self._log_row(self.run_id, row))

    def on_interrupt(self, state) -> None:
        self._safely("status", lambda: self.client.set_terminated(self.run_id, "KILLED"))

    def on_failure(self, error: BaseException) -> None:
        self._safely("status", lambda: self.client.set_terminated(self.run_id, "FAILED"))

    def on_finish(self, summary: dict, final: dict, test_set) -> None:
        """The summary's figures, then report.html, summary.json and the kept weights (written
        before: a missing one is skipped), and the run marked finished."""
        self._safely("summary", lambda: self._finish(summary))

    def _finish(self, summary: dict) -> None:
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), summary.get("epochs", 0)
        figures = [
            Metric(f"summary/{k}", float(v), stamp, step)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        self.client.log_batch(self.run_id, metrics=figures)
        for name in (REPORT_FILE, SUMMARY_FILE, kept_weights(summary)):
            path = Path(self.run.file(name))
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")
