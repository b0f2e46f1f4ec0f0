"""Training: tokenizer and tiny-model factory (more stages land here: SFT, DPO, Ray Train).

Kept import-light on purpose: importing `ttpa_ray.train` must not pull in torch or
DeepSpeed, so inference-side workers stay small.
"""
