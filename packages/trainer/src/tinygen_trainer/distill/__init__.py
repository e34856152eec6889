"""Distillation: a small student learns from a larger teacher.

- logits (the student shares the teacher's tokenizer): teacher_cache holds the
  teacher's top-k logits over blocks of a corpus, computed once (teacher.py,
  resumable); DistillTrainer (trainer.py) trains on them with loss.topk_kl.
- sequences (another tokenizer): the teacher writes texts (sequences.py), the
  student trains on them like on any corpus.
"""

from .teacher_cache import TeacherBlocks, TeacherCache, TeacherCacheError, build_teacher_cache

__all__ = ["CacheRequest", "DistillConfig", "DistillTrainer", "TeacherBlocks", "TeacherCache",
           "TeacherCacheError", "TextsRequest", "build_teacher_cache", "cache_teacher", "distill",
           "mean_topk_kl", "teacher_texts"]


def __getattr__(name: str):
    # torch and transformers load on first use, so the CLI's --help stays fast.
    if name in ("DistillConfig", "DistillTrainer", "distill", "mean_topk_kl"):
        from . import trainer

        return getattr(trainer, name)
    if name in ("CacheRequest", "cache_teacher"):
        from . import teacher

        return getattr(teacher, name)
    if name in ("TextsRequest", "teacher_texts"):
        from . import sequences

        return getattr(sequences, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
