"""Hidden acceptance test of the audit-log case, reset() included: the request asks for it."""

import audit_log


def test_off_by_default():
    assert audit_log.is_enabled() is False


def test_reset_turns_it_off():
    audit_log.toggle()
    audit_log.reset()
    assert audit_log.is_enabled() is False
