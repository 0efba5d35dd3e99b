"""Fixtures shared by the tests."""

import pytest
from processes import Program


@pytest.fixture
def programs(tmp_path):
    """Start programs with start(script, *args); every one is killed when the test ends."""
    started: list[Program] = []

    def start(script: str, *args: str) -> Program:
        program = Program(script, *args, cwd=tmp_path)
        started.append(program)
        return program

    yield start
    for program in started:
        program.kill()
        program.process.stdout.close()
