"""``kd teach``: teachers run once over a dataset on dask and write their logits into a logit store. The chunk
pipeline inside a worker (decode, device, write, retries) is :mod:`kd.teach.pipeline`, where the workers run and at
what precision :mod:`kd.teach.placement`, the run itself (store preparation, the cluster, the summary and its
failure check) :mod:`kd.teach.run`.

It may import :mod:`kd.track`, :mod:`kd.evaluate` and the levels below (:mod:`kd.core`, :mod:`kd.data`,
:mod:`kd.tasks`); it is independent of :mod:`kd.train`, which reads what it writes only through the store.
"""
