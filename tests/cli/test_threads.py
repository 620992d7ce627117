"""The thread policy of the command line (frozenvl.cli.threads): torch threads = the cores actually free."""

import pytest
import torch

from frozenvl.cli import threads
from frozenvl.cli.main import main


@pytest.fixture
def machine(monkeypatch):
    """A fake machine: ``machine(cores, other_running)``; no FROZENVL_THREADS / OMP_NUM_THREADS from outside."""
    monkeypatch.delenv("FROZENVL_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def set_machine(cores: int, busy: float) -> None:
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(threads, "other_running", lambda: (busy, "other runnable processes"))

    return set_machine


@pytest.mark.parametrize("cores, busy, expected", [
    (2, 0.0, 2),  # quiet: every core
    (2, 0.3, 2),  # an editor, a browser tab
    (2, 1.0, 1),  # one other busy process: 2 threads would wait on the descheduled one
    (2, 7.5, 1),  # a shared build machine: still one
    (8, 3.0, 5),
    (1, 0.0, 1),
])
def test_threads_follow_the_free_cores(machine, cores, busy, expected):
    machine(cores, busy)
    choice = threads.choose_threads()
    assert (choice.threads, choice.cores) == (expected, cores)
    assert f"{choice.threads} torch thread(s) on {cores} usable core(s)" in choice.describe()


def test_processes_share_the_free_cores(machine):
    machine(8, 0.0)
    assert threads.choose_threads(processes=2).threads == 4
    machine(2, 0.0)
    assert threads.choose_threads(processes=2).threads == 1


def test_the_user_and_the_run_config_win(machine, monkeypatch):
    machine(2, 7.0)
    assert threads.choose_threads(requested=2).threads == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads().threads == 2
    monkeypatch.setenv("FROZENVL_THREADS", "3")
    assert threads.choose_threads().reason == "FROZENVL_THREADS=3"
    monkeypatch.setenv("FROZENVL_THREADS", "many")
    with pytest.raises(ValueError, match="FROZENVL_THREADS must be a positive integer"):
        threads.choose_threads()


def test_other_running_reads_the_machine():
    busy, what = threads.other_running()
    assert busy >= 0.0 and what in ("other runnable processes", "1-min load average", "no load information")


def test_the_command_line_applies_the_policy(machine, monkeypatch, capsys):
    before = torch.get_num_threads()
    machine(2, 1.0)
    torch.set_num_threads(2)
    try:
        with pytest.raises(SystemExit):  # argparse's --help
            main(["data", "--help"])
        applied = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert applied == 1
    monkeypatch.setenv("FROZENVL_THREADS", "zero")
    assert main(["data", "--help"]) == 2
    assert "FROZENVL_THREADS must be a positive integer" in capsys.readouterr().err
