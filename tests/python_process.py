"""Python in a fresh process, as a user runs the scripts: the one runner of
the tests of entry points, backends, benchmarks and TensorFlow-free imports."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python_environment(backend=None, changes=None):
    """This process's environment with the repository first on PYTHONPATH,
    TensorFlow's C++ logging off, KERAS_BACKEND=`backend` (None: as it is)
    and `changes` (a None value removes the variable)."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), environment.get("PYTHONPATH")])
    )
    if backend is not None:
        environment["KERAS_BACKEND"] = backend
    for name, value in (changes or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment


def run_python(args, backend=None, changes=None, timeout=600, check=True):
    """Runs `python ARGS` (a script and its flags, or "-c" and code) in the
    repository root with `python_environment(backend, changes)`.

    Returns the `subprocess.CompletedProcess` with its output as text; with
    `check`, a non-zero exit raises AssertionError showing the output's end.
    """
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        check=False,
        cwd=REPO,
        env=python_environment(backend, changes),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{list(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def worst_difference_on(backend, script, timeout=600):
    """Runs `script` (Python code whose output ends with its Keras backend
    and a worst difference) on `backend`; returns that difference after
    checking the backend it ran on."""
    result = run_python(["-c", script], backend=backend, timeout=timeout)
    ran_on, worst = result.stdout.split()[-2:]
    assert ran_on == backend
    return float(worst)
