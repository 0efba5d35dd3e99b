"""The trust benchmark's figures: each is the median, in milliseconds, of one timing per
operation it names. A fake clock sets the timings, so the test checks what a figure is made of,
never how fast this machine is (speed is the benchmark's to print, not a test's to assert)."""

import pytest

from fedchain.trust import cost

# One slow outlier: the median of these is 4 ms, their mean 85 ms, their sum 255 ms.
DURATIONS_S = (0.004, 0.001, 0.250)


class SteppingClock:
    """The cost module's `time`: the Nth operation timed (a pair of perf_counter calls, start
    and end) lasts DURATIONS_S[N], repeated."""

    def __init__(self, durations_s: tuple[float, ...]) -> None:
        self.durations_s = durations_s
        self.calls = 0

    def perf_counter(self) -> float:
        operation, end = divmod(self.calls, 2)
        self.calls += 1
        return 10.0 * operation + (self.durations_s[operation % len(self.durations_s)] * end)


@pytest.mark.parametrize(
    "measure", [cost.handshake_cost_ms, cost.login_cost_ms, cost.server_context_cost_ms]
)
def test_a_figure_is_the_median_in_ms_of_one_timing_per_operation(monkeypatch, measure):
    clock = SteppingClock(DURATIONS_S)
    monkeypatch.setattr(cost, "time", clock)
    # Each operation still runs for real (three TLS handshakes with a server process, say).
    assert measure(len(DURATIONS_S)) == pytest.approx(4.0, rel=1e-9)
    assert clock.calls == 2 * len(DURATIONS_S)
