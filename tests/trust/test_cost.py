"""The trust benchmark runs and gives figures (how large is for people to read, not for a test)."""

from fedchain.trust.cost import handshake_cost_ms, login_cost_ms, server_context_cost_ms


def test_the_benchmark_measures_every_figure():
    figures = [handshake_cost_ms(3), login_cost_ms(3), server_context_cost_ms(1)]
    assert all(isinstance(ms, float) and ms > 0 for ms in figures)
