"""irr-ray: intervention-robustness of refusal, on Ray."""

__version__ = "0.1.0"
