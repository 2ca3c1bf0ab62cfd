"""Measuring helpers of the benchmark scripts in ``tools/benchmark`` (as ``mmdet/utils/benchmark.py`` is
for mmdet's): interleaved timing and robust summaries (:mod:`.timing`), FLOP counting (:mod:`.flops`), peak
memory (:mod:`.memory`), per-stage times (:mod:`.profiling`) and a tokenizer of random id captions
(:mod:`.captions`).
"""
