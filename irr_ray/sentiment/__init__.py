"""The sentiment proof of concept (GPT-2 / IMDB): training-time mean matching vs post-hoc erasure.

``data`` (local templated reviews | IMDB) → ``model`` (a small GPT-2 built here | ``gpt2``) →
``train`` (one condition on :mod:`irr_ray.train`'s trainer) or ``sweep`` (λ grid on Ray Tune) →
``evaluate`` (perplexity, class-mean gap, probes, LEACE / INLP → the table); ``study`` runs the
steps over one directory. CLI: ``irr-ray sentiment build|train|eval|sweep``.
"""
