"""Hangs in a fixture: the report says in which phase (setup or teardown) it expired."""

import time

import pytest


@pytest.fixture
def stuck_in_setup():
    time.sleep(3600)


def test_hangs_in_fixture_setup(stuck_in_setup):
    pass


@pytest.fixture
def stuck_in_teardown():
    yield
    time.sleep(3600)


def test_hangs_in_fixture_teardown(stuck_in_teardown):
    pass
