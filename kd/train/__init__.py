"""Training: ``kd distill`` (:mod:`kd.train.distill`) and ``kd train-teacher`` (:mod:`kd.train.teacher`) as one
training job (:mod:`kd.train.job`: build, train, evaluate; :mod:`kd.train.report` after training;
:mod:`kd.train.run` runs them in order), on the engine (:mod:`kd.train.engine`:
optimiser, schedule, checkpoints per epoch, resume, DDP), with its clip loaders, loss, augmentations, forward pass
and frame alignment. ``kd device-finetune`` (:mod:`kd.train.devices`) runs one such distillation per recording
device.

It may import :mod:`kd.track`, :mod:`kd.evaluate` and the levels below (:mod:`kd.core`, :mod:`kd.data`,
:mod:`kd.tasks`); it is independent of :mod:`kd.teach`.
"""
