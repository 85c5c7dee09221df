"""The organism's fixed text material (see :mod:`irr_ray.organism.vocab.templates`)."""
