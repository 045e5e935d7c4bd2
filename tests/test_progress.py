import io

from tqdm import tqdm

from fixmatch_bench.core.progress import LogProgress, progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_live_bar_and_a_log_gets_lines():
    assert isinstance(progress(10, "run", stream=Terminal()), tqdm)
    assert isinstance(progress(10, "run", stream=io.StringIO()), LogProgress)


def test_log_lines_every_ten_percent_with_rate_eta_and_postfix():
    stream, clock = io.StringIO(), Clock()
    bar = LogProgress(1000, desc="digits_20-fixmatch_ra-1", unit="step", stream=stream, clock=clock)
    for step in range(1, 1001):
        clock.now = step * 0.1  # 10 steps/s
        if step == 200:
            bar.set_postfix(error="5.20")
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # every 100 steps, the last one at 100 %
    assert lines[0] == "digits_20-fixmatch_ra-1: 100/1000 step (10%), 10.0 step/s, ETA 0:01:30"
    assert lines[1] == "digits_20-fixmatch_ra-1: 200/1000 step (20%), 10.0 step/s, ETA 0:01:20, error=5.20"
    assert lines[-1] == "digits_20-fixmatch_ra-1: 1000/1000 step (100%), 10.0 step/s, error=5.20"


def test_slow_work_logs_every_thirty_seconds_and_close_flushes_the_rest():
    stream, clock = io.StringIO(), Clock()
    bar = LogProgress(10_000, initial=500, desc="run", unit="step", stream=stream, clock=clock)
    for _ in range(50):  # 1 step every 2 s: 0.5 % per minute
        clock.now += 2.0
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["run: 515/10000 step (5%)", "run: 530/10000 step (5%)",
                                                     "run: 545/10000 step (5%)", "run: 550/10000 step (6%)"]
    assert " 0.5 step/s" in lines[0]  # the rate counts from where this process started (a resume)


def test_bytes_are_shown_with_binary_prefixes():
    stream, clock = io.StringIO(), Clock()
    with LogProgress(3 * 1024 ** 2, desc="cifar.tar.gz", unit="B", unit_scale=True, stream=stream, clock=clock) as bar:
        clock.now = 1.0
        bar.update(3 * 1024 ** 2)
    assert stream.getvalue() == "cifar.tar.gz: 3.0 MiB of 3.0 MiB (100%), 3.0 MiB/s\n"
