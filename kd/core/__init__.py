"""What every stage shares: the augmented views of a clip (:mod:`kd.core.views`, drawn by teaching and replayed by
training), reading checkpoints and building teachers and students from them (:mod:`kd.core.checkpoints`), device
selection and the ``torchrun`` process group (:mod:`kd.core.devices`), parameter and MAC counts
(:mod:`kd.core.complexity`), glibc's allocator tuned for training steps (:mod:`kd.core.memory`) and the kinds of
clip failures (:mod:`kd.core.failures`).

It may import :mod:`kd.data`, :mod:`kd.tasks`, :mod:`kd.options` and the model packages (``teachers``, ``students``,
``layers``), no stage of kd.
"""
