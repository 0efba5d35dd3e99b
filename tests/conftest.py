"""Fixtures shared by the tests."""

import os

import pytest
from processes import Program


@pytest.fixture(autouse=True)
def usual_umask():
    """Files the tests write are 644 and their folders 755 whatever the umask of whoever runs
    them (002 on some systems): a trust file others may write is refused."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


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
