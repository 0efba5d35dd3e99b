"""Fixtures shared by the tests."""

import pytest
from processes import Program


@pytest.fixture
def programs(tmp_path):
    """Start programs with start(script, *args); every one is killed when the test ends."""
    started: list[Program] = []

    def start(script: str, *args: str, max_file_bytes: int = 0, env=None) -> Program:
        program = Program(script, *args, cwd=tmp_path, max_file_bytes=max_file_bytes, env=env)
        started.append(program)
        return program

    yield start
    for program in started:
        program.kill()
        program.process.stdout.close()
