"""Stopping a training run the way a crash would, to test ``--resume``."""


class Killed(Exception):
    """Raised by :func:`kill_after_epoch` to stop a training run the way a crash would."""


def kill_after_epoch(epoch: int):
    """An ``on_epoch`` callback that kills the run when ``epoch`` is done (to test ``--resume``)."""

    def on_epoch(done: int, record: dict) -> None:
        if done == epoch:
            raise Killed

    return on_epoch
