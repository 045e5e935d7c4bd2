"""FixMatch augmentations on uint8 [N, C, H, W] tensors: weak, RandAugment, CTAugment.

:func:`.augmenter.make_augmenter` is the entry point; the ops are in :mod:`.tensor_ops`
(batched, CPU or CUDA) and :mod:`.pil_ops` (per-image PIL, the reference), the policies in
:mod:`.randaugment` and :mod:`.ctaugment`.
"""
