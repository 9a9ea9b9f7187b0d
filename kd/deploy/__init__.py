"""Deployment: ``kd export`` (an ONNX graph of a student, its frontend, int8 quantisation and the checks and
metadata that go with the file), the ONNX Runtime student (:mod:`kd.deploy.onnx_runtime`) and the predictors
behind ``kd eval`` and ``kd predict`` (:mod:`kd.deploy.predict`), which open a checkpoint or an exported file alike,
and ``kd submit`` (:mod:`kd.deploy.submit`: a DCASE Task 1 output file and metadata from either).

It may import :mod:`kd.train` (clip loaders) and everything below it; it is the only stage that imports ONNX
Runtime, and none below imports it.
"""
