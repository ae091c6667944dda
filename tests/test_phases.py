"""A job's time split into phases (`resurgence.phases`): self time, the log line, the CLI's wiring."""

from __future__ import annotations

import time

import pytest

from resurgence import cli, gpus, jobs, phases, stages
from resurgence.phases import LOAD, OTHER, PHASES, SAMPLE, STARTUP, TRAIN, WRITE, PhaseClock


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_inner_phase_counts_only_in_itself_and_the_phases_add_up_to_the_time():
    t = FakeClock()
    clock = PhaseClock(clock=t)
    with clock.phase(TRAIN):
        t.now += 2.0
        with clock.phase(SAMPLE):
            t.now += 5.0
            with clock.phase(WRITE):
                t.now += 1.0
        t.now += 3.0
        with clock.phase(TRAIN):  # re-entered: still its own self time
            t.now += 0.5
    with clock.phase(SAMPLE):
        t.now += 4.0
    assert clock.seconds == {TRAIN: 5.5, SAMPLE: 9.0, WRITE: 1.0}
    assert sum(clock.seconds.values()) == t.now


def test_a_phase_that_raises_is_still_counted_and_an_unknown_name_is_refused():
    t = FakeClock()
    clock = PhaseClock(clock=t)
    with pytest.raises(RuntimeError), clock.phase(LOAD):
        t.now += 1.5
        raise RuntimeError("load failed")
    assert clock.seconds == {LOAD: 1.5}
    with pytest.raises(ValueError, match="phase must be one of"), clock.phase("sampling"):
        pass


def test_split_job_gives_every_phase_and_the_uncovered_rest_as_other():
    split = phases.split_job({SAMPLE: 6.0, WRITE: 1.0}, startup_s=0.5, total_s=10.0)
    assert list(split) == list(PHASES)
    assert split[STARTUP] == 0.5 and split[SAMPLE] == 6.0 and split[LOAD] == 0.0
    assert split[OTHER] == 2.5
    assert sum(split.values()) == pytest.approx(10.0)
    # Clock skew between the start stamp and the phases never makes "other" negative.
    assert phases.split_job({SAMPLE: 3.0}, startup_s=0.0, total_s=2.9)[OTHER] == 0.0


def test_the_log_line_is_found_after_a_progress_bars_carriage_return_and_the_last_one_wins():
    first = phases.phases_line({SAMPLE: 1.0})
    last = phases.phases_line({SAMPLE: 2.0, WRITE: 0.25})
    text = f"loading\ngenerate erased: 100%|####| 7/7 [00:25<00:00]\r{first}\nother\n{last}\n"
    assert phases.parse_phases(text.splitlines()) == {SAMPLE: 2.0, WRITE: 0.25}
    assert phases.parse_phases(["nothing here", ""]) is None


def test_in_phase_times_each_call_and_keeps_the_functions_result():
    phases.JOB_CLOCK.reset()

    @phases.in_phase(LOAD)
    def load(x: int) -> int:
        """Docstring kept."""
        time.sleep(0.02)
        return x + 1

    assert load(1) == 2 and load(2) == 3
    assert load.__doc__ == "Docstring kept."
    assert phases.JOB_CLOCK.seconds[LOAD] >= 0.04


def test_the_cli_prints_the_jobs_phases_with_its_startup_from_the_start_stamp(monkeypatch, capsys, tmp_path):
    def run_grids(args):
        with phases.phase(SAMPLE):
            time.sleep(0.05)
        with phases.phase(WRITE):
            time.sleep(0.01)
            (tmp_path / "out.png").write_text("x")

    monkeypatch.setattr(stages, "run_grids", run_grids)
    # What main() sets up for a real job (signal handlers, an owner watch, a GPU claim) stays out of pytest.
    monkeypatch.setattr(jobs, "stop_on_sigterm", lambda: None)
    monkeypatch.setattr(jobs, "watch_owner", lambda: False)
    monkeypatch.setattr(gpus, "pin_job_to_gpu", lambda: None)
    monkeypatch.setenv(phases.START_ENV, repr(time.time() - 3.0))  # the job began 3 s before main()
    assert cli.main(["grids", "--inputs", "a.png", "--out", str(tmp_path / "out.png")]) == 0
    split = phases.parse_phases(capsys.readouterr().err.splitlines())
    assert split is not None and set(split) == set(PHASES)
    assert 3.0 <= split[STARTUP] < 30.0
    assert split[SAMPLE] >= 0.05 and split[WRITE] >= 0.01
    assert split[LOAD] == 0.0 and split[TRAIN] == 0.0


def test_generation_counts_its_sampling_and_its_writing(tmp_path):
    from resurgence.generate.engine import GenerationConfig, generate_to_dir
    from resurgence.models.pipeline import build_random_pipeline

    pipe = build_random_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    phases.JOB_CLOCK.reset()
    records = [{"prompt": "a cat", "seed": s} for s in range(3)]
    generate_to_dir(pipe, records, GenerationConfig(steps=2, batch_size=2), tmp_path, progress=False)
    seconds = dict(phases.JOB_CLOCK.seconds)
    assert seconds[SAMPLE] > 0.0 and seconds[WRITE] > 0.0
    assert set(seconds) == {SAMPLE, WRITE}
