"""Hidden acceptance test of the dark-mode case: what the request asked for."""

import dark_mode


def test_off_by_default():
    assert dark_mode.is_enabled() is False


def test_toggle_switches_and_says_so():
    assert dark_mode.toggle() is True
    assert dark_mode.is_enabled() is True
    assert dark_mode.toggle() is False
