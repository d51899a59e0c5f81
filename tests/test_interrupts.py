import os
import signal

import pytest

from publisher import interrupts


def test_sigterm_raises_at_once_outside_and_is_held_inside_a_critical_section():
    restore = interrupts.install()
    try:
        with pytest.raises(interrupts.BuildInterrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # give the handler a chance to run
        assert info.value.exit_code == 143 and interrupts.pending() == signal.SIGTERM
        restore()
        restore = interrupts.install()
        assert interrupts.pending() is None
        with interrupts.critical_section():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)
            held = interrupts.pending()
        assert held == signal.SIGTERM  # noted, not raised: the release finished going live
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is not interrupts._handler
